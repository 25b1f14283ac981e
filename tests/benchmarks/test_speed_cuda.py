"""benchmarks/speed.py --device cuda on a machine without a GPU: a named refusal, and the timing waits for the GPU
only where there is one (the CUDA path itself needs a GPU to run; none was at hand)."""
import torch

from mimkit.benchmarks import speed


def test_asking_for_cuda_without_one_is_refused_by_name(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert speed.main(["--device", "cuda", "--models", "mimkit", "--steps", "1", "--repeats", "1"]) == 2
    assert "--device cuda was asked for but torch sees no CUDA device" in capsys.readouterr().err
    assert speed.main(["--device", "tpu"]) == 2
    assert "--device must be cpu or cuda" in capsys.readouterr().err


def test_timings_synchronise_the_gpu_and_only_the_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    speed.synchronize(torch.device("cpu"))
    assert calls == []
    speed.synchronize(torch.device("cuda:1"))  # a kernel launch returns at once: a timing must wait for it to end
    assert calls == ["cuda:1"]
