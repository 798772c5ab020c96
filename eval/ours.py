"""dqcodec's own models as RD codecs: a shipped family (all its levels), one model, a checkpoint, or a
folder of checkpoints of one family.

Everything goes through the public API (:mod:`dqcodec.codec.api`), so the rate is the size of
the real ``.dqc`` file, header included, and decoding reads nothing but those bytes. The
model's own estimate of the payload (-log2 p, from ``api.inspect``) is kept beside it.
"""

import json
import time
from pathlib import Path

import numpy as np

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.runner import Coded, RDCodec


# The API and registry are imported when first needed (they pull in torch), and looked up on
# their packages each time, so tests can stand in for them.


def list_models() -> list[dict]:
    """The shipped models (name, family, quality, bpp, psnr), from :mod:`dqcodec.models.registry`."""
    from dqcodec.models import registry

    return registry.list_models()


def default_model_name() -> str:
    """The name of the model that ``dqcodec.encode`` uses when given neither quality nor model."""
    from dqcodec.codec import api

    return api.resolve_model_name()


def run_model(image: np.ndarray, model: str, rate_lambda: float | None = None) -> Coded:
    """Encode ``image`` ((H, W, 3) uint8) with ``model`` (a name or checkpoint path; at the encoder
    trade-off ``rate_lambda``, None: the model's own) and decode the bytes again."""
    from dqcodec.codec import api

    start = time.perf_counter()
    data = api.encode(image, model=model, rate_lambda=rate_lambda)
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    decoded = np.asarray(api.decode(data).convert("RGB"))
    decode_seconds = time.perf_counter() - start
    # The real file is the rate; the model's estimate goes beside it to show the coder's overhead.
    return Coded(data, decoded, encode_seconds, decode_seconds, api.inspect(data)["estimated_bits"])


def our_codec(spec: str) -> RDCodec | None:
    """The RD codec that ``spec`` names, or None when it names nothing of ours.

    ``spec`` is an existing checkpoint path (one RD point), a folder of checkpoints of one family
    (one RD point per level, lowest quality first: e.g. ``checkpoints``, the hdq levels that are
    not shipped yet), a model family such as ``dq`` (one RD point per shipped quality level) or
    one shipped model's name (one RD point).

    Raises DQCodecError when a folder holds no checkpoint, or checkpoints of several families.
    """
    path = Path(spec)
    if path.is_dir():
        return _checkpoint_family(path)
    if path.exists():
        return _ours(path.stem, f"dqcodec checkpoint {path}", "checkpoint path", (str(path),))
    models = list_models()
    family = sorted((m for m in models if m["family"] == spec), key=lambda m: m["quality"])
    if family:
        return _ours(spec, f"dqcodec {spec} family, qualities {', '.join(str(m['quality']) for m in family)}",
                     "model name", tuple(m["name"] for m in family))
    for model in models:
        if model["name"] == spec:
            return _ours(spec, f"dqcodec model {spec} ({model['family']} family, quality {model['quality']})",
                         "model name", (spec,))
    return None


def _checkpoint_family(folder: Path) -> RDCodec:
    """The checkpoints ``folder/*.json`` of one family as one RD codec, lowest quality first."""
    infos = sorted(((json.loads(path.read_text()), path) for path in folder.glob("*.json")),
                   key=lambda item: item[0].get("quality", 0))
    families = {info.get("family") for info, _ in infos}
    if len(families) != 1:
        raise DQCodecError(f"{folder}: a folder codec needs checkpoints of one family, found {sorted(map(str, families))}")
    family = families.pop()
    qualities = ", ".join(str(info["quality"]) for info, _ in infos)
    return _ours(family, f"dqcodec {family} checkpoints in {folder}, qualities {qualities}", "checkpoint path",
                 tuple(str(path) for _, path in infos))


def _ours(name: str, description: str, parameter: str, points: tuple) -> RDCodec:
    """An RD codec of dqcodec models: one point per model (a name or a checkpoint path)."""
    return RDCodec(name=name, label=f"dqcodec {name}", description=description, kind="dqcodec",
                   parameter=parameter, points=points, run=run_model)


def at_lambdas(codec: RDCodec, lambdas: list[float]) -> RDCodec:
    """``codec`` (one of ours) with each of its models encoded at every encoder trade-off in
    ``lambdas`` (``dqcodec encode --lambda``) instead of at its own: the curve one model spans."""
    ordered = sorted(lambdas, reverse=True)  # lowest rate first
    return RDCodec(
        name=f"{codec.name}-lambdas",
        label=f"{codec.label}, encoder lambda swept",
        description=f"{codec.description}, encoded at lambda {', '.join(f'{value:g}' for value in ordered)}",
        kind=codec.kind,
        parameter=f"({codec.parameter}, encoder lambda)",
        points=tuple((model, value) for model in codec.points for value in ordered),
        run=lambda image, point: run_model(image, *point),
    )


def family_names() -> list[str]:
    """Names of the shipped model families, for help texts and error messages."""
    return sorted({m["family"] for m in list_models()})
