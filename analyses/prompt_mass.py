"""Example of a new head-attribution analysis, written against the protocol (< 40 lines).

Attention mass from the visual tokens of each latent frame to each prompt token, per head:
``mass[h, f, t] = mean_{p in f} A[p, t]`` with ``A = softmax(q k^T / sqrt(d))`` over the joint
sequence, averaged over visited layers and steps. ``A`` is never formed: attention with one-hot
values ``V[j, t] = [j is prompt token t]`` returns exactly ``A[:, prompt]`` (``[P, T]``).
"""

import torch
import torch.nn.functional as F
import xarray as xr

from vidinterp.analysis import Analysis
from vidinterp.registry import register_analysis


@register_analysis
class PromptMass(Analysis):
    name, group = "prompt_mass", "heads"
    requires = (("q", "visual"), ("k", "all"))
    site_kinds = ("joint",)

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, visit):
        layout = visit.layout
        keys = visit.get("k", "all").float()  # [B, H, S, d], the whole joint sequence
        one_hot = torch.zeros(keys.shape[2], layout.prompt_tokens, device=keys.device)
        one_hot[layout.prompt] = torch.eye(layout.prompt_tokens, device=keys.device)
        values = one_hot.expand(*keys.shape[:2], -1, -1)  # [B, H, S, T]
        mass = F.scaled_dot_product_attention(visit.get("q", "visual").float(), keys, values)  # [B, H, P, T]
        self.total = self.total + mass.unflatten(2, (layout.frames, -1)).mean(dim=(0, 3))  # [H, F, T]
        self.count += 1

    def result(self):
        self._require_visits()
        mass = (self.total / self.count).cpu().numpy()
        coords = {name: range(size) for name, size in zip(("head", "frame", "prompt_token"), mass.shape)}
        return xr.Dataset({"prompt_mass": (tuple(coords), mass)}, coords=coords)
