"""Learned codecs in the rate-distortion evaluation, coded through the deployed path.

Every codec and quality of a bundle (or of checkpoints, exported on the fly) codes each image
exactly as a camera and the host do: edge ONNX graph -> rANS -> packed wire frame -> unpack ->
rANS decode -> host ONNX graph. So the rates are real bytes (DESIGN decision 4): the payload (sum
of the rANS segments, comparable with the papers' bpp), the wire frame (header included) and,
beside them, the estimate from the integer tables (what the papers report).

Side information: the papers decode x with the ORIGINAL side image y; a deployed host has only
the reference camera's DECODED frame. ``side="original"`` (default) reproduces the papers'
protocol; ``side="decoded"`` codes y with the intra codec of the same bundle at the nearest lambda
and decodes x with that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stereodsc.bundle import Bundle, Codec, load_bundle, sha256_file
from stereodsc.codec.decoder import HostDecoder
from stereodsc.codec.encoder import EdgeEncoder, Encoded
from stereodsc.codec.roles import CodecRole
from stereodsc.errors import BitstreamError, ConfigError
from stereodsc.eval.rd import Record
from stereodsc.wire import unpack

log = logging.getLogger(__name__)

SIDE_MODES = ("original", "decoded")
CHECKPOINTS_GROUP = "checkpoints"
"""Source group of every checkpoint argument: together they play the part of one bundle."""


@dataclass(frozen=True)
class EvalPair:
    """One evaluated image: ``x`` is coded, ``side`` (the other camera) is the side information.

    Both are uint8 HxWx3 of one size, already preprocessed (paper protocol or native).
    """

    name: str
    x: np.ndarray
    side: np.ndarray


@dataclass(frozen=True)
class LearnedMethod:
    """One codec (role) of one bundle: one RD curve, one point per quality.

    ``group`` is the --model source it came from (a bundle folder, or all checkpoints together):
    side-information codecs are compared with, and take decoded side images from, the intra codec
    of their own group. ``checkpoints`` (per quality) are kept when the model came as checkpoints,
    for what only torch can show (DSIN's side_syn).
    """

    name: str
    group: str
    bundle: Bundle
    role: str
    checkpoints: tuple[Path, ...] = ()

    @property
    def codec(self) -> Codec:
        return self.bundle.codec(self.role)

    @property
    def uses_side_info(self) -> bool:
        return self.codec.uses_side_info

    def describe(self) -> dict[str, Any]:
        """What results.json says about this method: where it came from and its rate points."""
        codec = self.codec
        qualities = {}
        for q in codec.qualities:
            entry: dict[str, Any] = {"lmbda": q.lmbda}
            if q.index < len(self.checkpoints):
                entry["checkpoint"] = str(self.checkpoints[q.index])
            qualities[quality_label(q.index)] = entry
        return {
            "kind": "learned",
            "model": codec.model,
            "model_config": codec.model_config,
            "role": self.role,
            "uses_side_info": codec.uses_side_info,
            "source": self.group,
            "bundle_id": self.bundle.id,
            "qualities": qualities,
        }


def quality_label(index: int) -> str:
    """The ``Record.quality`` of a bundle quality index."""
    return f"q{index}"


def _checkpoint_groups(paths: Sequence[Path]) -> list[list[Path]]:
    """Checkpoints grouped by model config: each group exports as one codec, its checkpoints
    (ordered by lambda) its qualities, so separate rate-point checkpoints form one curve."""
    from stereodsc.train.checkpoint import load_checkpoint  # torch: only for checkpoint arguments

    groups: dict[str, list[Path]] = {}
    for path in paths:
        config = load_checkpoint(path)["model_config"]
        groups.setdefault(json.dumps(config, sort_keys=True), []).append(path)
    return list(groups.values())


def open_methods(
    models: Sequence[Path], sizes: Sequence[tuple[int, int]], stack: contextlib.ExitStack
) -> list[LearnedMethod]:
    """Every codec of the given bundles and checkpoints, named by its model ("balle2017", "ndic").

    Checkpoints are exported as ``stereodsc export`` does (parity-checked on its sample images)
    into a temporary folder that ``stack`` removes;
    ``sizes`` are the unpadded image sizes to export fixed-size graphs for. A model name that two
    sources give is suffixed with its source ("ndic@bundle_small").
    """
    found: list[tuple[str, str, Bundle, str, tuple[Path, ...]]] = []  # (label, group, bundle, role, checkpoints)
    checkpoints = []
    for path in map(Path, models):
        if path.is_dir():
            bundle = load_bundle(path)
            found += [(path.name, str(path), bundle, role, ()) for role in bundle.codecs]
        elif path.is_file():
            checkpoints.append(path)
        else:
            raise ConfigError(
                f"--model {path} does not exist: give a bundle folder (from stereodsc export) or a checkpoint (.pt)"
            )
    if checkpoints:
        from stereodsc.export import export_bundle  # torch

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stereodsc-eval-")))
        for i, group in enumerate(_checkpoint_groups(checkpoints)):
            log.info("exporting %d checkpoint(s) for evaluation: %s", len(group), ", ".join(map(str, group)))
            # Default samples, as `stereodsc export`: parity-checked, hyperprior scale path calibrated alike.
            report = export_bundle(group, tmp / f"bundle{i}", sizes=sizes, progress=False)
            bundle = load_bundle(report.bundle)
            by_digest = {sha256_file(p): p for p in group}
            for role, codec in bundle.codecs.items():
                ordered = tuple(
                    by_digest[bundle.manifest["codecs"][role]["qualities"][q.index]["checkpoint"]["sha256"]]
                    for q in codec.qualities
                )
                found.append((group[0].stem, CHECKPOINTS_GROUP, bundle, role, ordered))
    counts = Counter(bundle.codec(role).model for _, _, bundle, role, _ in found)
    methods = []
    for label, group_name, bundle, role, ckpts in found:
        model = bundle.codec(role).model
        methods.append(
            LearnedMethod(model if counts[model] == 1 else f"{model}@{label}", group_name, bundle, role, ckpts)
        )
    names = Counter(m.name for m in methods)
    repeated = sorted(n for n, c in names.items() if c > 1)
    if repeated:
        raise ConfigError(f"--model arguments give the same method name(s) {repeated} twice: pass each model once")
    return methods


def intra_partners(methods: Sequence[LearnedMethod]) -> dict[str, list[LearnedMethod]]:
    """Side-information method name -> the no-side-information methods of its source group; a source
    without one (a side-information-only bundle) gets the single intra
    codec among all the methods, if there is exactly one (else none: ambiguous)."""
    intra = [i for i in methods if not i.uses_side_info]
    only = intra if len(intra) == 1 else []
    return {m.name: [i for i in intra if i.group == m.group] or only for m in methods if m.uses_side_info}


def matching_quality(si_codec: Codec, intra_codec: Codec, index: int) -> int:
    """The intra quality trained with the lambda nearest to the side-information quality's lambda
    (the same index when a bundle's two codecs share their lambdas)."""
    lmbda = si_codec.quality(index).lmbda
    return min(intra_codec.qualities, key=lambda q: (abs(q.lmbda - lmbda), q.index)).index


def reference_quality(si_codec: Codec, intra_codec: Codec, index: int, above: int = 0) -> int:
    """The intra quality a rig codes the reference view with: ``above`` qualities over the matching one
    (capped at the intra codec's top quality)."""
    ranked = sorted(q.index for q in intra_codec.qualities)
    position = ranked.index(matching_quality(si_codec, intra_codec, index))
    return ranked[min(position + above, len(ranked) - 1)]


def side_references(methods: Sequence[LearnedMethod], side: str) -> dict[str, LearnedMethod]:
    """For ``side="decoded"``: side-information method name -> the intra method that codes its y.

    Raises ConfigError naming the fix when a side-information codec has no single intra partner,
    or when no model uses side information at all.
    """
    if side not in SIDE_MODES:
        raise ConfigError(f"side={side!r}: use 'original' (the papers' protocol) or 'decoded' (deployment)")
    if side == "original":
        return {}
    partners = intra_partners(methods)
    if not partners:
        raise ConfigError(
            "--side decoded needs a side-information model (ndic, ndic_cam, dsin); the models given "
            f"({', '.join(m.name for m in methods) or 'none'}) decode without side information: drop --side"
        )
    refs = {}
    for name, intras in partners.items():
        if len(intras) != 1:
            found = [i.name for i in intras] or "none"
            raise ConfigError(
                f"--side decoded: {name} needs exactly one intra (no side information) codec to decode its "
                f"side image (from its own source, or the only one given), found {found}: export a bundle with "
                "both codecs, pass exactly one no-SI model, or use --side original"
            )
        refs[name] = intras[0]
    return refs


class LearnedCoder:
    """Edge encoders and host decoders opened per (bundle, role, quality) and reused.

    At most `max_open` encoders, and host graphs per bundle, stay open (least recently used
    closed first): each holds 0.3-0.45 GB of onnxruntime arena at native size, and an evaluation
    walks through every quality once (the native bundle on Middlebury's held-out pairs peaked at
    3.9 GB with every session open, 3.1 GB with 2).
    """

    def __init__(self, max_open: int = 2) -> None:
        self.max_open = max_open
        self._encoders: OrderedDict[tuple[str, str, int], EdgeEncoder] = OrderedDict()
        self._decoders: dict[str, HostDecoder] = {}

    def encoder(self, method: LearnedMethod, quality: int) -> EdgeEncoder:
        key = (method.bundle.id, method.role, quality)
        if key in self._encoders:
            self._encoders.move_to_end(key)
        else:
            while len(self._encoders) >= self.max_open:
                self._encoders.popitem(last=False)[1].close()
            self._encoders[key] = EdgeEncoder(method.bundle, method.role, quality)
        return self._encoders[key]

    def round_trip(
        self, method: LearnedMethod, quality: int, image: np.ndarray, side: np.ndarray | None, seq: int = 0
    ) -> tuple[Encoded, int, np.ndarray]:
        """(encoded, wire bytes, decoded image): the frame goes through pack/unpack like on the wire."""
        encoder = self.encoder(method, quality)
        encoded = encoder.encode(image, estimate=True)
        data = encoder.frame(
            encoded, rig_id=0, camera_id=list(CodecRole).index(CodecRole.of(method.role)), seq=seq, t_capture_ns=0
        ).pack()
        if method.bundle.id not in self._decoders:
            self._decoders[method.bundle.id] = HostDecoder(method.bundle, max_open_graphs=self.max_open)
        decoded = self._decoders[method.bundle.id].decode(unpack(data), side)
        if not np.array_equal(decoded.symbols, encoded.symbols):
            raise BitstreamError(
                f"{method.name} q{quality}: the host decoded other symbols than the edge coded; "
                "the entropy coder or the bundle's tables are broken (run the entropy tests)"
            )
        return encoded, len(data), decoded.image


@dataclass(frozen=True)
class LearnedRun:
    """What ``code_learned`` measured.

    ``records``: x per (method, quality, image). ``side_records`` (``side="decoded"`` only): y as the
    intra codec that gave the decoded side images coded it, at every quality of that codec, named
    like x's records (method, quality, image = the pair's name): the reference camera's bytes and
    quality, which a rig pays beside x's. ``side_of``: side-information method -> {its quality:
    (intra method, intra quality)} whose decoded y it was given.
    """

    records: list[Record]
    side_records: list[Record]
    side_of: dict[str, dict[str, tuple[str, str]]]

    def side_used(self) -> dict[str, dict[str, str]]:
        """``side_of`` as results.json's meta writes it: method -> {quality: "<intra method> <quality>"}."""
        return {m: {q: f"{ref} {ref_q}" for q, (ref, ref_q) in qs.items()} for m, qs in self.side_of.items()}


def code_learned(
    methods: Sequence[LearnedMethod],
    pairs: Sequence[EvalPair],
    coder: LearnedCoder,
    side: str = "original",
    ms_ssim_win: int = 7,
    progress: bool = True,
    reference_above: int = 0,
) -> LearnedRun:
    """One record per (method, quality, image); side-information codecs get y as ``side`` says.

    With ``side="decoded"`` y is coded once per (intra quality, image) and measured too
    (``LearnedRun.side_records``), at every quality of each intra codec that decodes a side image,
    so the rig (both cameras) can be priced for the side-information codecs and for intra alone.
    ``reference_above``: y is coded that many intra qualities above the one whose lambda is nearest to
    x's (at most the top one): a rig may send its reference camera at a better quality.
    """
    if reference_above < 0 or (reference_above and side != "decoded"):
        raise ConfigError(
            f"--reference-above {reference_above}: give a number >= 0, with --side decoded (the reference view is "
            "only coded when the side image is the decoded one)"
        )
    from tqdm import tqdm

    refs = side_references(methods, side)
    decoded_sides: dict[tuple[str, int, str], np.ndarray] = {}
    side_records: list[Record] = []

    def decoded_side(ref: LearnedMethod, quality: int, pair: EvalPair, seq: int) -> np.ndarray:
        """y coded and decoded by the intra codec, once per (intra quality, image), and measured."""
        key = (ref.name, quality, pair.name)
        if key not in decoded_sides:
            encoded, wire_bytes, decoded = coder.round_trip(ref, quality, pair.side, None, seq)
            decoded_sides[key] = decoded
            side_records.append(measure(ref, quality, pair.name, pair.side, encoded, wire_bytes, decoded, ms_ssim_win))
        return decoded_sides[key]

    references = {r.name for r in refs.values()}
    side_of: dict[str, dict[str, tuple[str, str]]] = {}
    records = []
    total = len(pairs) * sum(len(m.codec.qualities) for m in methods)
    with tqdm(total=total, desc="learned codecs", unit="img", disable=not progress) as bar:
        for method in methods:
            ref = refs.get(method.name)
            for point in method.codec.qualities:
                ref_q = 0 if ref is None else reference_quality(method.codec, ref.codec, point.index, reference_above)
                if ref is not None:
                    side_of.setdefault(method.name, {})[quality_label(point.index)] = (ref.name, quality_label(ref_q))
                for seq, pair in enumerate(pairs):
                    side_image = None
                    if method.uses_side_info:
                        side_image = pair.side if ref is None else decoded_side(ref, ref_q, pair, seq)
                    elif method.name in references:
                        decoded_side(method, point.index, pair, seq)  # y at this quality: the both-intra rig
                    encoded, wire_bytes, decoded = coder.round_trip(method, point.index, pair.x, side_image, seq)
                    records.append(
                        measure(method, point.index, pair.name, pair.x, encoded, wire_bytes, decoded, ms_ssim_win)
                    )
                    bar.update(1)
    return LearnedRun(records, side_records, side_of)


def measure(
    method: LearnedMethod,
    quality: int,
    name: str,
    original: np.ndarray,
    encoded: Encoded,
    wire_bytes: int,
    decoded: np.ndarray,
    ms_ssim_win: int,
) -> Record:
    """The record of one learned round trip: real bytes, the tables' estimate, PSNR and MS-SSIM."""
    h, w = original.shape[:2]
    return Record.measure(
        method=method.name,
        quality=quality_label(quality),
        image=name,
        original=original,
        decoded=decoded,
        payload_bytes=encoded.payload_bytes,
        wire_bytes=wire_bytes,
        estimated_bpp=None if encoded.estimated_bits is None else encoded.estimated_bits / (h * w),
        ms_ssim_win=ms_ssim_win,
    )
