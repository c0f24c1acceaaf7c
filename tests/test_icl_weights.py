"""Trained ICL models saved with a run reload to the same predictions; files outside models.icl are refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.icl import GPT2ICL, LoopedTransformer  # noqa: E402
from simulations.icl.weights import WEIGHTS, load_models, save_models  # noqa: E402


def test_saved_models_reload_to_the_same_predictions(tmp_path):
    gpt = GPT2ICL(3, 9, n_layer=2, n_embd=16, n_head=2, seed=1)
    looped = LoopedTransformer(3, 4, kind="gpt2", window=2, n_points=9, n_layer=1, n_embd=16, n_heads=2, seed=2)
    with torch.no_grad():  # move off the init, so a reload that ignored the state_dict would differ
        for p in gpt.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_models(tmp_path, {"gpt": (gpt, {"d": 3, "n_points": 9, "n_layer": 2, "n_embd": 16, "n_head": 2}),
                                  "looped": (looped, {"d": 3, "n_loops": 4, "kind": "gpt2", "window": 2,
                                                      "n_points": 9, "n_layer": 1, "n_embd": 16, "n_heads": 2})})
    assert path.name == WEIGHTS
    back = load_models(tmp_path)  # the run directory works as well as the file
    x, y = torch.randn(5, 9, 3), torch.randn(5, 9)
    gpt.eval(), looped.eval()
    with torch.no_grad():
        torch.testing.assert_close(back["gpt"](x, y), gpt(x, y), rtol=0, atol=0)
        torch.testing.assert_close(back["looped"](x, y), looped(x, y), rtol=0, atol=0)
    assert not back["gpt"].training


def test_only_models_icl_classes_and_plain_kwargs_are_saved(tmp_path):
    with pytest.raises(ValueError, match="only classes of models.icl"):
        save_models(tmp_path, {"m": (torch.nn.Linear(2, 2), {"in_features": 2, "out_features": 2})})
    with pytest.raises(ValueError, match="plain values"):
        save_models(tmp_path, {"m": (GPT2ICL(2, 3, 1, 8, 1), {"d": torch.tensor(2)})})
    with pytest.raises(ValueError, match="at least one"):
        save_models(tmp_path, {})


def test_a_file_naming_a_class_outside_models_icl_is_refused(tmp_path):
    path = save_models(tmp_path, {"m": (GPT2ICL(2, 3, 1, 8, 1), {"d": 2, "n_points": 3, "n_layer": 1, "n_embd": 8,
                                                                  "n_head": 1})})
    blob = torch.load(path, weights_only=True)
    blob["models"]["m"]["module"] = "os"
    torch.save(blob, path)
    with pytest.raises(ValueError, match="outside models.icl"):
        load_models(path)
    torch.save({"format": 99}, path)
    with pytest.raises(ValueError, match="format"):
        load_models(path)
