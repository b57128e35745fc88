"""Example of a new head-attribution analysis, written against the protocol with core imports only.

Attention mass from the visual tokens of each latent frame to each prompt token, per head:
``mass[h, f, t] = mean_{p in f} A[p, t]`` with ``A = softmax(q k^T / sqrt(d))`` over the joint
sequence, padded prompt slots masked out as the model masks them, averaged over visited layers
and steps. ``A`` is never formed: attention with one-hot values ``V[j, t] = [j is prompt token
t]`` returns exactly ``A[:, prompt]`` (``[P, T]``). Value widths other than ``head_dim`` send
SDPA to its math kernel, which does form the scores, so queries go in chunks of at most
``SCORE_BLOCK_ELEMENTS / (B * H * S)`` rows (a 64 MiB float32 score block).
"""

import torch
import torch.nn.functional as F
import xarray as xr

from vidinterp.accumulators import RunningMeans
from vidinterp.analysis import Analysis
from vidinterp.kernels.tokens import key_padding_mask
from vidinterp.registry import register_analysis

SCORE_BLOCK_ELEMENTS = 2**24


@register_analysis
class PromptMass(Analysis):
    name, group = "prompt_mass", "heads"
    requires = (("q", "visual"), ("k", "all"))
    site_kinds = ("joint",)

    def reset(self):
        self.records = RunningMeans()  # (step, layer) -> [H, F, T]

    def update(self, visit):
        layout, query = visit.layout, visit.get("q", "visual").float()  # [B, H, P, d]
        keys = visit.get("k", "all").float()  # [B, H, S, d], the whole joint sequence
        one_hot = torch.zeros(keys.shape[2], layout.prompt_tokens, device=keys.device)
        one_hot[layout.prompt] = torch.eye(layout.prompt_tokens, device=keys.device)
        values = one_hot.expand(*keys.shape[:2], -1, -1)  # [B, H, S, T]
        attended = key_padding_mask(visit)  # [B, S], False at padded prompt slots; None: no padding
        mask = None if attended is None else attended[:, None, None, :]
        chunk = max(1, SCORE_BLOCK_ELEMENTS // (keys.shape[0] * keys.shape[1] * keys.shape[2]))
        mass = torch.cat([F.scaled_dot_product_attention(rows, keys, values, attn_mask=mask)
                          for rows in query.split(chunk, dim=2)], dim=2)  # [B, H, P, T]
        per_frame = mass.unflatten(2, (layout.frames, -1)).mean(dim=(0, 3))  # [H, F, T]
        self.records.add((visit.step, visit.layer), per_frame)

    def merge(self, other):
        self.records.merge(other.records)
        self.layout = self.layout or other.layout
        return self

    def result(self):
        self._require_visits()
        mass = torch.stack(list(self.records.means().values())).mean(dim=0).cpu().numpy()  # [H, F, T]
        coords = {name: range(size) for name, size in zip(("head", "frame", "prompt_token"), mass.shape)}
        return xr.Dataset({"prompt_mass": (tuple(coords), mass)}, coords=coords)
