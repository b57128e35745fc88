"""The adapter conformance suite: every registered adapter passes every public check of
:mod:`vidinterp.testing.checks` (mechanics on each tiny variant, results on each tiny variant and
on its family's planted model) unchanged, as a third-party adapter would run them."""

from __future__ import annotations

import pytest

import vidinterp
import vidinterp.testing
from vidinterp.adapters.cogvideox import CogVideoXAdapter
from vidinterp.testing import parametrize_with_checks


@parametrize_with_checks(sorted(vidinterp.adapter_classes().values(), key=lambda cls: cls.family))
def test_adapter(check):
    check()


def test_tiny_registry_lists_families_and_variants(monkeypatch):
    from vidinterp.testing import tiny

    assert set(vidinterp.adapter_classes()) <= set(vidinterp.testing.tiny_families())
    variants = ("2b", "5b", "1.5", "i2v")
    assert vidinterp.testing.tiny_variants("cogvideox") == {name: {"variant": name} for name in variants}
    assert vidinterp.testing.tiny_variants("hunyuan_video") == {"default": {}}
    with pytest.raises(ValueError, match="no tiny pipeline for family 'nowhere'"):
        vidinterp.testing.tiny_pipeline("nowhere")
    monkeypatch.setattr(tiny, "_BUILDERS", dict(tiny._BUILDERS))
    monkeypatch.setattr(tiny, "_VARIANTS", dict(tiny._VARIANTS))

    @vidinterp.testing.register_tiny("elsewhere", variants={"small": {"num_layers": 1}})
    def tiny_elsewhere(num_layers: int = 2):
        return ("elsewhere", num_layers)

    assert "elsewhere" in vidinterp.testing.tiny_families()
    assert vidinterp.testing.tiny_variants("elsewhere") == {"small": {"num_layers": 1}}
    assert vidinterp.testing.tiny_pipeline("elsewhere", **vidinterp.testing.tiny_variants("elsewhere")["small"]) == (
        "elsewhere", 1)
    vidinterp.testing.register_tiny("elsewhere", variants=("a", "b"))(tiny_elsewhere)
    assert vidinterp.testing.tiny_variants("elsewhere") == {"a": {"variant": "a"}, "b": {"variant": "b"}}


class ElsewhereCogVideoX(CogVideoXAdapter):
    """An adapter of a family vidinterp has no tiny builder for."""

    family = "elsewhere_cogvideox"


def test_adapter_without_tiny_builder_fails_with_how_to_register_one():
    checks = vidinterp.testing.adapter_checks(ElsewhereCogVideoX)
    assert [check.id for check in checks if check.case != "planted"] == ["ElsewhereCogVideoX-tiny_pipeline_registered"]
    with pytest.raises(AssertionError, match=r"register_tiny\('elsewhere_cogvideox'.*tiny=\{variant name"):
        checks[0]()
    with pytest.raises(AssertionError, match="ElsewhereCogVideoX-tiny_pipeline_registered failed"):
        vidinterp.testing.check_adapter(ElsewhereCogVideoX)


def test_adapter_checks_run_on_given_tiny_builders():
    tiny = {"mine": lambda: vidinterp.testing.tiny_pipeline("cogvideox", variant="2b")}
    checks = vidinterp.testing.adapter_checks(ElsewhereCogVideoX, tiny=tiny)
    variant_ids = [check.id for check in checks if check.case != "planted"]
    assert variant_ids and all(check_id.startswith("ElsewhereCogVideoX-mine-") for check_id in variant_ids)
    assert [check.id for check in checks if check.case == "planted"] == [
        check.id.replace("CogVideoXAdapter", "ElsewhereCogVideoX")
        for check in vidinterp.testing.adapter_checks(CogVideoXAdapter) if check.case == "planted"]
    [stable_names] = [check for check in checks if check.name == "sites_have_stable_names"]
    stable_names()
    with pytest.raises(TypeError, match=r"tiny\['mine'\] must be a zero-argument callable"):
        vidinterp.testing.adapter_checks(ElsewhereCogVideoX, tiny={"mine": {"variant": "2b"}})
