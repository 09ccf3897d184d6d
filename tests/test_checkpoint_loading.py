"""Loading weights into SOLO models: safe reading, URLs, strict inference, fine-tuning."""

import functools
import http.server
import logging
import os
import pickle
import threading

import pytest
import torch

from conftest import tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from solo_d2.checkpoint import CheckpointMismatchError, SOLOCheckpointer, UntrustedWeightsFileError


class CodeInPickle:
    """An object that pickles as a function call: what weights_only loading must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


def predictor_cfg(weights, extra=()):
    return tiny_cfg(extra=["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", "64", *extra])


@pytest.fixture
def saved(tmp_path):
    """A solo_d2 checkpoint of the tiny model: (path, state dict)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    return tmp_path / "model.pth", model.state_dict()


def test_predictor_loads_every_weight(saved):
    path, expected = saved
    predictor = DefaultPredictor(predictor_cfg(path))
    for key, value in predictor.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_file_needing_full_unpickling_is_refused_unless_trusted(saved, tmp_path):
    path, expected = saved
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["trainer_state"] = CodeInPickle()
    unsafe = tmp_path / "unsafe.pth"
    torch.save(checkpoint, unsafe)
    with pytest.raises(UntrustedWeightsFileError, match="TRUST_WEIGHTS_PICKLE") as error:
        DefaultPredictor(predictor_cfg(unsafe))
    assert "getcwd" in str(error.value) and "unsafe.pth" in str(error.value)
    predictor = DefaultPredictor(predictor_cfg(unsafe, ["MODEL.SOLO.TRUST_WEIGHTS_PICKLE", "True"]))
    assert torch.equal(predictor.model.head.cate_pred.weight, expected["head.cate_pred.weight"])


def test_pkl_files_are_read_without_running_code(saved, tmp_path):
    path, expected = saved
    arrays = {k: v.numpy() for k, v in torch.load(path, weights_only=True)["model"].items()}
    good = tmp_path / "model.pkl"
    with open(good, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "test"}, f)
    predictor = DefaultPredictor(predictor_cfg(good))
    assert torch.equal(predictor.model.head.cate_pred.bias, expected["head.cate_pred.bias"])
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": arrays, "__author__": CodeInPickle()}, f)
    with pytest.raises(UntrustedWeightsFileError, match="getcwd"):
        DefaultPredictor(predictor_cfg(bad))


def test_weights_from_a_url_are_downloaded_once_and_loaded(saved, tmp_path, monkeypatch):
    path, expected = saved
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/model.pth"
        predictor = DefaultPredictor(predictor_cfg(url))
    finally:
        server.shutdown()
    assert torch.equal(predictor.model.head.cate_pred.weight, expected["head.cate_pred.weight"])
    assert any(name == "model.pth" for _, _, files in os.walk(tmp_path / "cache") for name in files)


def other_class_count_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = build_model(tiny_cfg(extra=["MODEL.SOLO.NUM_CLASSES", "80"]))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("coco")
    return tmp_path / "coco.pth", model.state_dict()


def test_inference_loading_is_strict(tmp_path):
    path, _ = other_class_count_checkpoint(tmp_path)
    with pytest.raises(CheckpointMismatchError) as error:
        DefaultPredictor(predictor_cfg(path))
    assert "head.cate_pred.weight: (80, 32, 3, 3) vs (3, 32, 3, 3)" in str(error.value)
    # keys that are missing or unexpected fail too, all listed in one message
    state = torch.load(path, weights_only=True)["model"]
    state = {k: v for k, v in state.items() if not k.startswith("head.cate_tower")}
    state["head.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "partial.pth")
    model = build_model(tiny_cfg(extra=["MODEL.SOLO.NUM_CLASSES", "80"]))
    with pytest.raises(CheckpointMismatchError) as error:
        SOLOCheckpointer(model, strict=True).load(str(tmp_path / "partial.pth"))
    message = str(error.value)
    assert "head.cate_tower" in message and "head.extra" in message


def test_fine_tuning_on_another_class_count_drops_only_the_category_layer(tmp_path, caplog):
    path, source = other_class_count_checkpoint(tmp_path)
    torch.manual_seed(2)
    model = build_model(tiny_cfg()).train()
    initial = model.head.cate_pred.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="solo_d2"):
        DetectionCheckpointer(model).load(str(path))  # as DefaultTrainer does
    assert "checkpoint's category output layer has 80 classes, the model 3" in caplog.text
    assert "does not match" not in caplog.text  # nothing else to report
    assert torch.equal(model.head.cate_pred.weight, initial)
    for key, value in model.state_dict().items():
        if not key.startswith("head.cate_pred."):
            assert torch.equal(value, source[key]), key


def test_training_reports_all_mismatches_in_one_warning(tmp_path, caplog):
    path, _ = other_class_count_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)["model"]
    del state["head.mask_preds.0.weight"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    model = build_model(tiny_cfg()).train()
    with caplog.at_level(logging.WARNING, logger="solo_d2"):
        SOLOCheckpointer(model).load(str(tmp_path / "partial.pth"))
    warnings = [r for r in caplog.records if "does not match" in r.getMessage()]
    assert len(warnings) == 1 and "head.mask_preds.0.weight" in warnings[0].getMessage()
