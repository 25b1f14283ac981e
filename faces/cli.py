"""The `mimkit-faces` command: face-forgery detection (GM-DF) and face data, on the core's configuration system.

Each command is a typed function (core.config): --config FILE, --print_config and dotted keys everywhere.
`pretrain` and `train-detector` are the core's pretraining (one run folder, Lightning) on `FaceData`: without
labels the GM-DF loss is its masked reconstruction, with labels and domains the whole detector loss. `detect`
scores a folder or a video into a CSV; `evaluate` runs the faces benchmark tasks through mimkit.benchmarks.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Literal, Sequence

from mimkit.core import api
from mimkit.core.cli import pretrain_command, recipes_command
from mimkit.core.config import Command, Tool
from mimkit.core.errors import ConfigError, DataError

from .data import FaceData

DATA_ALIASES = {"--sources": "--data.sources", "--split": "--data.split", "--compression": "--data.compression",
                "--frames-per-video": "--data.frames_per_video", "--faces": "--data.faces"}


# ------------------------------------------------------------------------------------------ pretrain / train-detector
def _with_domains(kwargs: dict, labelled: bool) -> dict:
    data = kwargs.get("data")
    if isinstance(data, (str, Path)):
        data = FaceData(sources=[str(data)])
    if not isinstance(data, FaceData):
        raise ConfigError("the data section must be face data: --data.sources [name=]reader:path")
    kwargs["data"] = dataclasses.replace(data, labelled=labelled)
    method = kwargs.get("method") or "gm_df"
    model = dict(kwargs.get("model") or {})
    if method == "gm_df" and not model.get("domains") and data.sources:
        model["domains"] = data.domain_names()  # the prompts' domain words are the data's domains, in order
    kwargs["model"] = model
    return kwargs


@functools.wraps(api.pretrain)
def pretrain(*args, **kwargs) -> dict:
    kwargs.update(zip(("data", "out"), args))
    return api.pretrain(**_with_domains(kwargs, labelled=False))


@functools.wraps(api.pretrain)
def train_detector(*args, **kwargs) -> dict:
    kwargs.update(zip(("data", "out"), args))
    return api.pretrain(**_with_domains(kwargs, labelled=True))


def faces_pretrain_command(name: str, function, help_text: str, description: str) -> Command:
    command = pretrain_command(FaceData, lambda argv: "gm_df", description=description)
    return dataclasses.replace(command, name=name, function=function, help=help_text,
                               aliases={**command.aliases, **DATA_ALIASES})


# ------------------------------------------------------------------------------------------ detect
def _inputs(path: Path):
    """Videos of a file or folder: a video file; in a folder, each video file, image or frame subfolder."""
    from .data import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Video

    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            raise DataError(f"input {path}: expected a video ({' '.join(VIDEO_SUFFIXES)}), an image or a folder")
        return [Video(path, -1, path.name)]
    entries = [p for p in sorted(path.iterdir())
               if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES]
    if not entries:
        raise DataError(f"input folder {path} holds no videos, images or frame folders")
    return [Video(p, -1, p.name) for p in entries]


def detect(run: str, input: str, out: str = "scores.csv", frames_per_video: int = 8, batch_size: int = 32,
           seed: int = 0, faces: Literal["cropped", "mtcnn"] | None = None) -> Path:
    """Score faces for forgery with a trained detector run: one CSV row per frame (video, frame, score = the
    probability that the face is fake, video_score = the mean over the video's frames).

    Args:
        run: a train-detector run folder
        input: a video file, an image, or a folder of videos, images and frame folders (each one "video")
        out: the CSV file to write
        frames_per_video: frames drawn from each video (seeded)
        batch_size: frames scored at once
        seed: seed of the frame choice
        faces: "cropped" (inputs are face crops) or "mtcnn" (raw frames: detect and align each frame's largest face);
            default: as the run's training data (its data.faces, data.face_margin, data.face_weights)
    """
    import numpy as np
    import torch

    from mimkit.core.data import make_loader
    from mimkit.core.runs import load_run

    from .data import FaceForgeryDataset

    method, config = load_run(run)
    if not hasattr(method, "detect"):
        raise ConfigError(f"run {run} holds a {getattr(method, 'method_name', 'method')} model, which does not "
                          f"detect forgeries; train one with `mimkit-faces train-detector`")
    size = int(method.encoder.img_size[0])
    trained = (config or {}).get("data") or {}
    trained = trained if isinstance(trained, dict) else {}
    face_data = FaceData(faces=faces or trained.get("faces", "cropped"), face_weights=trained.get("face_weights"),
                         face_margin=trained.get("face_margin", FaceData.face_margin))
    dataset = FaceForgeryDataset([("input", _inputs(Path(input)))], img_size=size, frames_per_video=frames_per_video,
                                 seed=seed, labelled=False, aligner=face_data.aligner(size))
    method.eval()
    scores = []
    with torch.no_grad():
        for batch in make_loader(dataset, batch_size):
            scores.append(method.detect(batch["image"]))
    scores = torch.cat(scores).numpy()
    videos = np.asarray([v for v, _ in dataset.items])
    means = {v: float(scores[videos == v].mean()) for v in np.unique(videos)}
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "frame", "score", "video_score"])
        for (number, frame), score in zip(dataset.items, scores):
            frame_name = frame.name if isinstance(frame, Path) else str(frame)
            writer.writerow([dataset.videos[number].name, frame_name, f"{score:.6f}", f"{means[number]:.6f}"])
    print(f"scored {len(scores)} frames of {len(means)} videos -> {out_path}")
    return out_path


# ------------------------------------------------------------------------------------------ evaluate
def evaluate(run: str, data: str, task: list[str] | None = None, out: str | None = None,
             compare_random_init: bool = False, steps: int | None = None, batch_size: int | None = None,
             lr: float | None = None, frames_per_video: int = 8, compression: str = "c23", seed: int = 0,
             per_identity: int | None = None, recognizer: str | None = None, generated: str | None = None,
             identity_train: dict | None = None) -> list[dict]:
    """Train and score a detector from a run on face-forgery benchmark tasks (frame/video AUC, EER, accuracy), or
    measure a Vec2Face run's generated identities; results are appended to the run's metrics.json (or
    OUT/metrics.json).

    Args:
        run: a mimkit run folder (a GM-DF run trains as a detector; any other encoder gets a logistic regression)
        data: the tasks' data root (see `mimkit.faces.bench`: the synthetic folder, an FF++ folder, or a folder
            holding FaceForensics++/, Celeb-DF-v2/, DFDC/, WildDeepfake/)
        task: faces-synthetic, ffpp-c23, ffpp-to-{celebdf,dfdc,wilddeepfake,dfd}, gmdf-lodo-<dataset>; for a
            vec2face run vec2face-identity-consistency and vec2face-identity-identification (its default), and
            vec2face-recognizer-verification (trains a face recognizer on a generated set: slow on CPU)
        out: where to add the results (default: the run folder)
        compare_random_init: also the same model at random initialisation
        steps: detector training steps (default: the task's, 300)
        batch_size: detector batch size (default 32)
        lr: detector learning rate (default 1e-3)
        frames_per_video: frames drawn from each video
        compression: FaceForensics++ / DFD compression
        seed: seed of the training and of the random initialisation
        per_identity: generation tasks: images generated from each real face's perturbed vector (default 5)
        recognizer: generation tasks: the judge of identity: an IResNet file or "dlib" (default: the model's own
            identity network)
        generated: vec2face-recognizer-verification: the `mimkit-faces generate` folder its recognizer trains on
            (default: the task generates one with the run's model)
        identity_train: vec2face-recognizer-verification: IdentityTrainConfig fields of that recognizer, e.g.
            '{depth: 18, max_steps: 500}' (default: Vec2Face README's R50 config)
    """
    from mimkit.benchmarks.report import write_table
    from mimkit.benchmarks.runner import run_task
    from mimkit.benchmarks.tasks import get_task
    from mimkit.core.runs import load_run, update_metrics

    method, config = load_run(run)
    from .bench import GENERATION_TASKS, RECOGNIZER_TASK

    generation = {t.name for t in GENERATION_TASKS}
    detection = {k: v for k, v in {"steps": steps, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    generating = {k: v for k, v in {"per_identity": per_identity, "recognizer": recognizer,
                                    "batch_size": batch_size}.items() if v is not None}
    verifying = {k: v for k, v in {"per_identity": per_identity, "batch_size": batch_size, "generated": generated,
                                   "train": identity_train}.items() if v is not None}
    default = sorted(generation) if config.get("method") == "vec2face" else ["faces-synthetic"]
    rows = []
    for name in task or default:
        spec = get_task(name)
        if spec.domain != "faces":
            raise ConfigError(f"task {name} is a {spec.domain} task; mimkit-faces evaluates faces tasks")
        reader = {"frames_per_video": frames_per_video, **({"compression": compression} if name != "faces-synthetic"
                                                            else {})}
        options = (verifying if name == RECOGNIZER_TASK.name else generating if name in generation else detection)
        rows += [{**row, "method": config.get("method")} for row in
                 run_task(spec, method, data, run_config=config, compare_random_init=compare_random_init, seed=seed,
                          reader_options=reader, **options)]
    update_metrics(Path(out) if out else Path(run), {"results": rows})
    print(write_table(rows, ["task", "init", "metric", "value", "num_train", "num_test"]), end="")
    return rows


# ------------------------------------------------------------------------------------------ recipes / synthetic
def synthetic(out: str, kind: list[Literal["colour", "swap", "blur", "noise"]] | None = None, size: int = 64,
              frames: int = 3, count: int | None = None, seed: int = 0, strength: float = 1.0) -> Path:
    """Write real faces that packages ship (scikit-image's LFW crops and astronaut, matplotlib's Grace Hopper)
    and self-blended forgeries of them, one folder per forgery kind in the real/ + fake/ layout
    (OUT/<kind>/{train,test}/{real,fake}/<video>/frame_<k>.png), and the same real faces aligned for face
    recognition (MTCNN, ArcFace template, 112 x 112) as OUT/identities/<name>.png for Vec2Face's generation tasks.

    Args:
        out: the folder to write
        kind: forgery kinds, one domain each (default: all four)
        size: face crop side in pixels
        frames: frames per "video" (small shifts of one face)
        count: use only the first COUNT faces (default: all 102)
        seed: random seed of the forgeries and the train/test split
        strength: how far a forgery departs from the real face (1: the subtlest set; the demo uses 2; see
            mimkit.faces.synthetic.forge)
    """
    from .synthetic import FORGERY_KINDS, write_dataset, write_identity_faces

    if not strength > 0:
        raise ConfigError(f"--strength must be positive (1 = the subtlest forgeries), got {strength}")
    root = write_dataset(out, kinds=kind or FORGERY_KINDS, size=size, frames=frames, seed=seed, count=count,
                         strength=strength)
    write_identity_faces(root / "identities", count=count)
    print(f"wrote real faces and their forgeries ({', '.join(kind or FORGERY_KINDS)}; strength {strength:g}) to "
          f"{root}, and the real faces "
          f"aligned for recognition to {root / 'identities'}")
    return root


def build_tool() -> Tool:
    from .demo import run_demo
    from .generate import generate_command
    from .identity import train_identity_command

    return Tool("mimkit-faces", "Face-forgery detection (GM-DF) and face data: FaceForensics++, Celeb-DF, DFDC, "
                "WildDeepfake, DFD and real/ + fake/ folders.", [
                    Command("demo", run_demo, "pretrain and train a small GM-DF on shipped faces and their forgeries, "
                            "against random init"),
                    faces_pretrain_command(
                        "pretrain", pretrain, "self-supervised pretraining on face frames (labels unused)",
                        "Pretrain a method (gm_df by default: its masked-reconstruction branch) on the frames of face "
                        "datasets, labels unused. --data.sources takes [name=]reader:path items (readers: ffpp, "
                        "celebdf, dfdc, wilddeepfake, dfd, folder). Writes one run folder."),
                    faces_pretrain_command(
                        "train-detector", train_detector, "train a GM-DF forgery detector on labelled face datasets",
                        "Train GM-DF on labelled face-forgery data, each source a domain (its prompts' domain "
                        "words, its meta-learning episodes). A recipe (`mimkit-faces recipes gm_df`) gives the "
                        "settings: --config FILE; --pretrained RUN/model.safetensors starts from a pretrain run."),
                    Command("detect", detect, "score a folder or video for forgery, CSV out"),
                    Command("evaluate", evaluate, "train and score a detector on faces benchmark tasks "
                            "(frame/video AUC, EER, accuracy)"),
                    recipes_command("mimkit.faces", "mimkit-faces", "the faces methods' recipes",
                                    {"gm_df": "train-detector", "vec2face": "pretrain"}),
                    Command("synthetic", synthetic, "write real faces that packages ship and self-blended forgeries"),
                    Command("generate", generate_command, "Vec2Face: a face dataset, one image subfolder per identity"),
                    Command("train-identity", train_identity_command, "train a face recognizer (IResNet, ArcFace) on "
                            "one image subfolder per identity"),
                ], epilog="Start with `mimkit-faces demo --out runs/faces-demo`; each command has its own --help.")


def main(argv: Sequence[str] | None = None) -> int:
    return build_tool().run(argv)


if __name__ == "__main__":
    sys.exit(main())
