"""Every public entry point turns bad input into a clear error: the right exception type, and a
message that names what was wrong and what was expected (checked with ``match=``).

One case per line where possible, so this file doubles as a catalogue of what is validated.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import titn_edu as T
from titn_edu import checks
from titn_edu.checkpoint import CheckpointError, UnsafeCheckpointError
from titn_edu.metrics import confusion_matrix, count_flops, topk_accuracy


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return T.build_model("titn-tiny", num_classes=10, depth=1)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])


def run(model, data, **kwargs):
    """``fit`` on CPU, quietly, with anything overridden."""
    return T.fit(model, data, **{"epochs": 1, "device": "cpu", "progress": False, **kwargs})


# ----------------------------------------------------------------------------- model
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(num_classes=0), ValueError, r"num_classes must be an integer >= 1; got 0"),
        (dict(num_classes="10"), ValueError, r"num_classes .* got '10'"),
        (dict(num_classes=10, img_size=30), ValueError, r"img_size.*30"),
        (dict(num_classes=10, drop_path=1.0), ValueError, r"drop_path must be in \[0, 1\)"),
        (dict(num_classes=10, outer_dim=100, outer_heads=3), ValueError, r"divisible|outer_dim"),
    ],
    ids=["num_classes_0", "num_classes_str", "img_size_vs_patch", "drop_path_1", "heads_do_not_divide_dim"],
)
def test_titn_constructor(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        T.TITN(**kwargs)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match=r"unknown model name 'titn-huge'; choose one of \[.*'titn-tiny'"):
        T.build_model("titn-huge", num_classes=10)


def test_build_model_unknown_override():
    with pytest.raises(ValueError, match=r"unknown model argument\(s\) \['dropout'\]; TITN accepts"):
        T.build_model("titn-tiny", num_classes=10, dropout=0.1)


@pytest.mark.parametrize(
    "images, exc, match",
    [
        (np.zeros((2, 3, 32, 32), np.float32), TypeError, r"expects a torch.Tensor of images; got ndarray"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ValueError, r"floating-point images, got dtype torch.uint8.*float\(\) / 255"),
        (torch.zeros(2, 1, 32, 32), ValueError, r"\(B, 3, 32, 32\); got \(2, 1, 32, 32\).*in_chans=1"),
        (torch.zeros(2, 3, 28, 28), ValueError, r"got \(2, 3, 28, 28\).*img_size=28"),
        (torch.zeros(3, 32, 32), ValueError, r"single image.*unsqueeze\(0\)"),
        (torch.zeros(2, 32, 32, 3), ValueError, r"channels-last.*permute\(0, 3, 1, 2\)"),
    ],
    ids=["numpy", "uint8", "channels", "size", "no_batch_axis", "channels_last"],
)
def test_model_forward(model, images, exc, match):
    with pytest.raises(exc, match=match):
        model(images)


# ----------------------------------------------------------------------------- attention
def test_attention_feature_sizes_differ():
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 5, 6), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"share their feature size d_k.*\(2, 5, 4\).*\(2, 5, 6\)"):
        T.scaled_dot_product_attention(q, k, v)


def test_attention_keys_values_token_counts_differ():
    with pytest.raises(ValueError, match=r"same number of tokens"):
        T.scaled_dot_product_attention(torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 4))


def test_attention_integer_inputs():
    x = torch.ones(2, 3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"q must be floating point; got dtype torch.int64.*q.float\(\)"):
        T.scaled_dot_product_attention(x, x, x)


def test_attention_numpy_inputs():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match=r"q must be a torch.Tensor.*got ndarray"):
        T.scaled_dot_product_attention(x, x, x)


def test_attention_float_mask():
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match=r"mask must be a boolean tensor.*torch.float32.*mask.bool\(\)"):
        T.scaled_dot_product_attention(x, x, x, mask=torch.ones(2, 3, 3))


def test_attention_mask_shape():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"mask \(2, 5, 5\) does not broadcast.*\(2, 3, 3\)"):
        T.scaled_dot_product_attention(x, x, x, mask=torch.ones(2, 5, 5, dtype=torch.bool))


def test_multi_head_attention_heads_do_not_divide_dim():
    with pytest.raises(ValueError, match=r"dim=8 is not divisible by num_heads=3.*divisors of 8"):
        T.MultiHeadAttention(8, 3)


@pytest.mark.parametrize("shape", [(2, 4, 6), (4, 8)], ids=["wrong_dim", "no_batch_axis"])
def test_multi_head_attention_tokens(shape):
    with pytest.raises(ValueError, match=r"expects tokens of shape \(batch, tokens, 8\); got " + re_shape(shape)):
        T.MultiHeadAttention(8, 2)(torch.randn(*shape))


def re_shape(shape):
    return r"\(" + r", ".join(map(str, shape)) + r"\)"


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=1.5), r"alpha must be a number in \[0, 1\].*got 1.5"),
        (dict(alpha=-0.1), r"alpha must be a number in \[0, 1\]"),
        (dict(alpha=float("nan")), r"alpha must be a number in \[0, 1\].*nan"),
        (dict(distillation="soft", tau=0), r"tau .* must be a number > 0; got 0"),
        (dict(distillation="medium"), r"unknown distillation kind 'medium'; choose one of"),
    ],
    ids=["alpha_above_1", "alpha_negative", "alpha_nan", "tau_zero", "unknown_kind"],
)
def test_loss_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.TITNLoss(**kwargs)


def test_loss_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels in \[1, 12\], outside \[0, 10\).*num_classes"):
        T.TITNLoss()(torch.randn(2, 10), None, torch.tensor([1, 12]))


def test_loss_negative_label():
    with pytest.raises(ValueError, match=r"labels in \[-1, 2\], outside \[0, 10\)"):
        T.TITNLoss()(torch.randn(2, 10), None, torch.tensor([-1, 2]))


def test_loss_batch_sizes_differ():
    with pytest.raises(ValueError, match=r"targets must be class indices of shape \(2,\); got \(3,\)"):
        T.TITNLoss()(torch.randn(2, 10), None, torch.tensor([1, 2, 3]))


def test_loss_integer_logits():
    with pytest.raises(ValueError, match=r"class_logits must be floating point"):
        T.TITNLoss()(torch.ones(2, 10, dtype=torch.long), None, torch.tensor([1, 2]))


def test_loss_teacher_class_count_differs():
    with pytest.raises(ValueError, match=r"teacher predicts 100 classes but the student 10"):
        T.TITNLoss()(torch.randn(2, 10), torch.randn(2, 10), torch.tensor([1, 2]), torch.randn(2, 100))


def test_loss_soft_targets_not_probabilities():
    targets = torch.full((2, 10), 0.5)
    with pytest.raises(ValueError, match=r"soft targets .* must be probabilities.*row sums in \[5, 5\]"):
        T.TITNLoss()(torch.randn(2, 10), None, targets)


def test_loss_soft_targets_nan():
    targets = torch.full((2, 10), 0.1)
    targets[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"soft targets .* finite"):
        T.TITNLoss()(torch.randn(2, 10), None, targets)


def test_cutmix_lambda_out_of_range():
    y = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]; got 1.5"):
        T.cutmix_cross_entropy(torch.randn(2, 10), y, y, 1.5)


# ----------------------------------------------------------------------------- data and teachers
def test_dataset_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet'; expected one of mnist, cifar10, cifar100"):
        T.get_dataset("imagenet", train=True)


def test_dataset_missing_files_name_the_search(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train split of cifar10 was not found[\s\S]*" + str(tmp_path)):
        T.get_dataset("cifar10", train=True, root=tmp_path, download=False)


def test_dataset_truncated_npz_names_the_path(tmp_path):
    folder = tmp_path / "cifar10-npz"
    folder.mkdir()
    good = tmp_path / "good.npz"
    np.savez(good, images=np.zeros((10, 32, 32, 3), np.uint8), labels=np.arange(10), classes=np.array(list("abcdefghij")))
    bad = folder / "cifar10_test.npz"
    bad.write_bytes(good.read_bytes()[:200])  # cut short: a download or copy that stopped midway
    with pytest.raises(ValueError, match=r"Could not read .*cifar10_test.npz as an npz file"):
        T.get_dataset("cifar10", train=False, root=tmp_path, download=False)


def test_dataset_limit_below_class_count():
    with pytest.raises(ValueError, match=r"limit must be None or an integer >= the number of classes of cifar10 \(10\)"):
        T.get_dataset("cifar10", train=False, limit=5)


def test_dataset_integer_images_rejected_by_dataset_class():
    with pytest.raises(ValueError, match=r"images must be a uint8 tensor \(N, C, H, W\)"):
        T.ImageArrayDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), list("ab"))


def test_dataset_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        T.ImageArrayDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 5]), list("ab"))


def test_batch_mixer_unknown_kind():
    with pytest.raises(ValueError, match=r"Unknown batch mixing 'cutout'; expected one of cutmix"):
        T.batch_mixer("cutout", num_classes=10)


def test_teacher_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown teacher 'resnet9000'; expected one of vgg16_bn, cnn-small"):
        T.build_teacher("resnet9000", num_classes=10)


# ----------------------------------------------------------------------------- fit / evaluate
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(epochs=-1), ValueError, r"epochs must be an integer >= 1; got -1"),
        (dict(epochs=0), ValueError, r"epochs must be an integer >= 1; got 0"),
        (dict(lr=-1e-3), ValueError, r"lr must be a finite number > 0; got -0.001"),
        (dict(lr=float("inf")), ValueError, r"lr must be a finite number > 0; got inf"),
        (dict(batch_size=0), ValueError, r"batch_size must be an integer >= 1; got 0"),
        (dict(weight_decay=-1.0), ValueError, r"weight_decay must be a finite number >= 0"),
        (dict(optimizer="adam"), ValueError, r"unknown optimizer 'adam'; use 'paper'"),
        (dict(scheduler="step"), ValueError, r"unknown scheduler 'step'; use 'cosine'"),
        (dict(device="tpu"), ValueError, r"unknown device 'tpu'; use 'auto', 'cpu'"),
        (dict(mix_alpha=-1.0), ValueError, r"alpha .* must be a positive number; got -1"),
        (dict(seed="0"), TypeError, r"seed must be an integer; got '0'"),
        (dict(callbacks=[3]), TypeError, r"callbacks must be callables"),
    ],
    ids=["epochs_negative", "epochs_zero", "lr_negative", "lr_inf", "batch_size_zero", "weight_decay_negative",
         "optimizer_unknown", "scheduler_unknown", "device_unknown", "mix_alpha_negative", "seed_str", "callback"],
)
def test_fit_arguments(model, batch, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        run(model, batch, **kwargs)


def test_fit_images_and_labels_lengths_differ(model, batch):
    with pytest.raises(ValueError, match=r"images \(4\) and labels \(3\) differ in length"):
        run(model, (batch[0], batch[1][:3]))


def test_fit_data_of_wrong_type(model):
    with pytest.raises(TypeError, match=r"train_data must be a torch Dataset, a DataLoader, a titn_edu DeviceLoader or an \(images, labels\)"):
        run(model, "data/")


def test_fit_model_of_wrong_type(batch):
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module; got str"):
        run("titn", batch)


def test_fit_labels_out_of_range(model, batch):
    with pytest.raises(ValueError, match=r"labels .*\[0, 20\].*|labels in \[0, 20\], outside \[0, 10\)"):
        run(model, (batch[0], torch.tensor([0, 1, 2, 20])), mixing=None)


def test_fit_integer_images(model, batch):
    with pytest.raises(ValueError, match=r"float.*torch.uint8"):
        run(model, (batch[0].to(torch.uint8), batch[1]))


def test_fit_images_of_wrong_size(model, batch):
    with pytest.raises(ValueError, match=r"got \(4, 3, 28, 28\).*img_size=28"):
        run(model, (torch.randn(4, 3, 28, 28), batch[1]), mixing=None)


def test_fit_teacher_class_count_differs(model, batch):
    teacher = T.build_teacher("cnn-small", num_classes=100)
    with pytest.raises(ValueError, match=r"teacher predicts 100 classes but the student 10"):
        run(model, batch, teacher=teacher)


def test_fit_teacher_is_the_student(model, batch):
    with pytest.raises(ValueError, match=r"teacher and student are the same module"):
        run(model, batch, teacher=model)


def test_fit_resume_from_missing_folder(model, batch, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot resume from .*nowhere.*last.pt"):
        run(model, batch, resume=tmp_path / "nowhere")


def test_fit_resume_from_a_different_model(model, batch, tmp_path):
    other = T.build_model("titn-tiny", num_classes=10, depth=2)
    T.save_checkpoint(tmp_path / "last.pt", other, epoch=1)
    with pytest.raises(ValueError, match=r"cannot resume: .*last.pt' was saved from a different model"):
        run(model, batch, resume=tmp_path)


def test_evaluate_labels_out_of_range(model, batch):
    with pytest.raises(ValueError, match=r"evaluation labels lie in \[0, 20\] but the model predicts 10 classes"):
        T.evaluate(model, (batch[0], torch.tensor([0, 1, 2, 20])), device="cpu")


def test_evaluate_batch_size_zero(model, batch):
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1; got 0"):
        T.evaluate(model, batch, batch_size=0, device="cpu")


def test_evaluate_num_classes_zero(model, batch):
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1; got 0"):
        T.evaluate(model, batch, num_classes=0, device="cpu")


# ----------------------------------------------------------------------------- metrics, seeding
def test_topk_batch_sizes_differ():
    with pytest.raises(ValueError, match=r"targets \(3,\) do not match logits \(2, 10\)"):
        topk_accuracy(torch.randn(2, 10), torch.tensor([1, 2, 3]))


def test_confusion_matrix_labels_out_of_range():
    with pytest.raises(ValueError, match=r"classes in \[1, 20\], outside \[0, 10\)"):
        confusion_matrix(torch.tensor([1, 2]), torch.tensor([1, 20]), 10)


def test_count_flops_bad_shape(model):
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\) or \(B, C, H, W\) with positive sizes"):
        count_flops(model, (3, 0, 32))


@pytest.mark.parametrize("seed, exc, match", [("1", TypeError, r"seed must be an integer"), (-1, ValueError, r"seed must be in \[0, 2\*\*32\)")])
def test_seed_everything(seed, exc, match):
    with pytest.raises(exc, match=match):
        T.seed_everything(seed)


# ----------------------------------------------------------------------------- checkpoints
def test_load_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing.pt"):
        T.load_model(tmp_path / "missing.pt")


def test_load_empty_folder_names_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in folder .*expected one of \['best.pt', 'last.pt'\]"):
        T.load_checkpoint(tmp_path)


def test_load_truncated_checkpoint_names_the_path(tmp_path, model):
    path = T.save_checkpoint(tmp_path / "last.pt", model, epoch=1)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"could not read .*last.pt.*truncated, corrupted"):
        T.load_model(path)


def test_load_foreign_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"notes.pt"):
        T.load_checkpoint(path)


def test_load_bare_state_dict_explains_how(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights.pt.*not a titn_edu checkpoint.*load_state_dict"):
        T.load_checkpoint(tmp_path / "weights.pt")


def test_load_pickle_payload_is_refused(tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "titn_edu.checkpoint", "x": Payload()}, f)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil.pt.*pickled Python objects"):
        T.load_model(path)
    assert not marker.exists()


def test_save_non_module(tmp_path):
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module; got str"):
        T.save_checkpoint(tmp_path / "c.pt", "model")


def test_save_non_plain_extra(tmp_path, model):
    with pytest.raises(TypeError, match=r"extra\['note'\] has type object.*plain values"):
        T.save_checkpoint(tmp_path / "c.pt", model, note=object())
    assert not list(tmp_path.iterdir())


def test_save_bad_epoch(tmp_path, model):
    with pytest.raises(ValueError, match=r"epoch must be a whole number >= 0.*got 'x'"):
        T.save_checkpoint(tmp_path / "c.pt", model, epoch="x")


def test_save_to_a_folder(tmp_path, model):
    with pytest.raises(IsADirectoryError, match=r"it is a folder; give a file name such as .*last.pt"):
        T.save_checkpoint(tmp_path, model)


# ----------------------------------------------------------------------------- checks (coursework)
def test_checks_not_a_function():
    with pytest.raises(TypeError, match=r"checks.attention expects a function \(q, k, v\) -> \(output, weights\); got int"):
        checks.attention(3)


def test_checks_instance_instead_of_class():
    with pytest.raises(TypeError, match=r"checks.multi_head_attention expects your class .*not an instance"):
        checks.multi_head_attention(T.MultiHeadAttention(8, 2))


def test_checks_unknown_dataset():
    with pytest.raises(ValueError, match=r"dataset must be one of \['mnist', 'cifar10', 'cifar100'\]; got 'imagenet'"):
        checks.preprocess(lambda x: x, "imagenet")


def test_load_model_with_weights_that_do_not_fit(tmp_path, model):
    path = T.save_checkpoint(tmp_path / "c.pt", model, epoch=1)
    ckpt = T.load_checkpoint(path)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"c.pt' cannot be rebuilt: .*weights do not fit.*Missing key"):
        T.load_model(path)


def test_load_model_with_an_unknown_constructor_argument(tmp_path, model):
    path = T.save_checkpoint(tmp_path / "c.pt", model, epoch=1)
    ckpt = T.load_checkpoint(path)
    ckpt["model"]["kwargs"]["future_option"] = 1
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"cannot be rebuilt.*future_option"):
        T.load_model(path)


def test_fit_resume_with_another_optimizer(model, batch, tmp_path):
    run(model, batch, output_dir=tmp_path, optimizer="adamw", batch_size=2)
    with pytest.raises(ValueError, match=r"cannot resume from .*last.pt.*optimizer/scheduler state does not fit"):
        run(model, batch, resume=tmp_path, epochs=2, optimizer="paper", batch_size=2)


def test_fit_resume_from_a_corrupt_checkpoint(model, batch, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=r"could not read .*last.pt"):
        run(model, batch, resume=tmp_path)


def test_fit_loader_without_labels(model, batch):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(batch[0]), batch_size=2)
    with pytest.raises(TypeError, match=r"each batch must be \(images, labels\)"):
        run(model, loader)


# ----------------------------------------------------------------------------- command line
@pytest.fixture
def cli():
    return pytest.importorskip("titn_edu.cli", reason="the titn-edu command line is not part of this build")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--preset", "nope"], r"argument --preset: invalid choice: 'nope'"),
        (["train", "--dataset", "svhn"], r"argument --dataset: invalid choice: 'svhn'"),
        (["train", "--dataset", "mnist", "--model", "titn-huge"], r"argument --model: invalid choice: 'titn-huge'"),
        (["train", "--dataset", "mnist", "--epochs", "0"], r"--epochs must be >= 1; got 0"),
        (["train", "--dataset", "mnist", "--epochs", "-3"], r"--epochs must be >= 1; got -3"),
        (["train", "--dataset", "mnist", "--batch-size", "0"], r"--batch-size must be >= 1; got 0"),
        (["train", "--dataset", "mnist", "--lr", "-0.1"], r"--lr must be a finite number > 0; got -0.1"),
        (["train", "--dataset", "mnist", "--lr", "fast"], r"--lr must be a number; got 'fast'"),
        (["train", "--dataset", "mnist", "--alpha", "1.5"], r"--alpha: must be a number in \[0, 1\]; got 1.5"),
        (["train", "--dataset", "mnist", "--tau", "0"], r"--tau must be a finite number > 0; got 0"),
        (["train", "--dataset", "mnist", "--teacher", "resnet9000", "--output", "{tmp}"], r"--teacher 'resnet9000' is neither a teacher name"),
        (["train", "--dataset", "mnist", "--device", "tpu"], r"unknown device 'tpu'"),
        (["train", "--dataset", "mnist", "--model-arg", "depth"], r"expected KEY=VALUE"),
        (["train"], r"train needs --dataset \(or a --preset\)"),
        (["train", "--resume", "/nonexistent/run"], r"--resume '/nonexistent/run': no titn-edu run folder there"),
        (["evaluate", "x.pt", "--split", "val"], r"argument --split: invalid choice: 'val'"),
        (["fly"], r"invalid choice: 'fly'"),
    ],
    ids=["preset", "dataset", "model", "epochs_zero", "epochs_negative", "batch_size_zero", "lr_negative", "lr_word",
         "alpha", "tau", "teacher", "device", "model_arg", "no_dataset", "resume_missing", "split", "command"],
)
def test_cli_bad_arguments_are_usage_errors(cli, capsys, tmp_path, argv, match):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([a.replace("{tmp}", str(tmp_path / "run")) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(match, err), err
    assert "usage: titn-edu" in err and "Traceback" not in err


def test_cli_missing_checkpoint_names_the_path(cli, capsys, tmp_path):
    code = cli.main(["evaluate", str(tmp_path / "missing.pt"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0
    assert re.search(r"titn-edu: error: no checkpoint at .*missing.pt", err), err
    assert "Traceback" not in err


def test_cli_process_exits_2_without_traceback(cli):
    """End to end, as a user runs it: ``python -m titn_edu`` with a bad flag."""
    env = dict(os.environ, PYTHONPATH=str(Path(T.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-m", "titn_edu", "train", "--dataset", "mnist", "--epochs", "-1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "--epochs must be >= 1; got -1" in proc.stderr and "Traceback" not in proc.stderr
