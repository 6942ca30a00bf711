"""CURVE on the camera -> host link, over real sockets on loopback: allowed cameras are decoded,
a camera whose key is not in the host's allow-list gets nothing decoded (and is counted and logged),
plain mode still works and says so at start-up.
"""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from stereodsc.codec.encoder import EdgeEncoder
from stereodsc.edge_encoder.daemon import edge_config_from_dict
from stereodsc.errors import ConfigError
from stereodsc.host_decoder.config import host_config_from_dict
from stereodsc.host_decoder.service import HostService, InProcessReceiver
from stereodsc.host_decoder.sinks import DecodedFrame
from stereodsc.pipeline import STEREO, free_port, run_pipeline
from stereodsc.security import load_client_curve, load_server_curve, new_keypair
from stereodsc.transport import FrameSender
from tiny_models import bundle_dir, sample_pair

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory, "stereo")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """host + cam0 + cam1 allowed (public keys in keys/allowed), intruder not."""
    for name in ("host", "cam0", "cam1", "intruder"):
        new_keypair(name, tmp_path / "keys")
    allowed = tmp_path / "keys" / "allowed"
    allowed.mkdir()
    for name in ("cam0", "cam1"):
        (allowed / f"{name}.key").write_bytes((tmp_path / "keys" / f"{name}.key").read_bytes())
    return tmp_path / "keys"


def _host_security(keys: Path) -> dict[str, Any]:
    return {"curve": True, "server_secret": str(keys / "host.key_secret"), "allowed_keys": str(keys / "allowed")}


def _edge_security(keys: Path, name: str) -> dict[str, Any]:
    return {"curve": True, "secret": str(keys / f"{name}.key_secret"), "server_public": str(keys / "host.key")}


def _frames(service: HostService, camera_id: int, n: int, rig_id: int = 1) -> list[bytes]:
    enc = EdgeEncoder(service.bundle, "intra", 0)
    encoded = enc.encode(sample_pair()[0])
    return [
        enc.frame(encoded, rig_id=rig_id, camera_id=camera_id, seq=seq, t_capture_ns=seq).pack() for seq in range(n)
    ]


def _serve(service: HostService, senders: list[tuple[FrameSender, list[bytes]]], seconds: float) -> None:
    """Each sender offers its frames in turn (IMMEDIATE drops them until its handshake passed) while
    the host reads, handles and checks refusals: until the first sender's frames are all in, a refusal
    was seen and nothing more arrives, or `seconds` run out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sender, frames in senders:
            if frames and sender.send(frames[0]):
                frames.pop(0)
        service.check_refused()
        data = service.receiver.recv(timeout_ms=20)
        if data is not None:
            service.handle(data, time.monotonic())
        if not any(frames for _, frames in senders[:1]) and service.stats.refused_keys and data is None:
            break


def test_new_keypair_is_private_and_never_overwritten(tmp_path: Path) -> None:
    public, secret = new_keypair("cam7", tmp_path / "k")
    assert public.name == "cam7.key" and secret.name == "cam7.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    curve = load_client_curve(str(secret), str(public))
    assert len(curve.public) == len(curve.secret) == 40
    with pytest.raises(ConfigError, match="already exist"):
        new_keypair("cam7", tmp_path / "k")
    with pytest.raises(ConfigError, match="plain file name"):
        new_keypair("../x", tmp_path / "k")


def test_bad_security_configs_are_refused(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"curve = true needs server_secret and allowed_keys"):
        host_config_from_dict({"security": {"curve": True}}, "h.toml")
    with pytest.raises(ConfigError, match=r"curve = true needs secret and server_public"):
        edge_config_from_dict({"security": {"curve": True, "secret": "x"}}, "e.toml")
    with pytest.raises(ConfigError, match="holds no secret key"):
        load_server_curve(str(keys / "host.key"), str(keys / "allowed"))
    with pytest.raises(ConfigError, match="cannot read a key"):
        load_server_curve(str(tmp_path / "missing.key_secret"), str(keys / "allowed"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no \*\.key file"):
        load_server_curve(str(keys / "host.key_secret"), str(tmp_path / "empty"))


def test_only_allowed_camera_keys_get_frames_decoded(
    stereo: Path, keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = host_config_from_dict(
        {"host": {"endpoint": endpoint, "bundle": str(stereo)}, "security": _host_security(keys)}
    )
    decoded: list[DecodedFrame] = []
    service = HostService.from_config(cfg, callbacks=[decoded.append])
    cam = load_client_curve(str(keys / "cam0.key_secret"), str(keys / "host.key"))
    intruder = load_client_curve(str(keys / "intruder.key_secret"), str(keys / "host.key"))
    # The intruder even knows the host's public key and speaks the right wire format and bundle.
    with (
        FrameSender(endpoint, curve=cam) as good,
        FrameSender(endpoint, curve=intruder, reconnect_ivl_ms=50, reconnect_ivl_max_ms=100) as bad,
        caplog.at_level(logging.WARNING, logger="stereodsc.host"),
    ):
        try:
            _serve(service, [(good, _frames(service, 0, 6)), (bad, _frames(service, 9, 6))], seconds=30)
        finally:
            service.close()
    assert [d.frame.camera_id for d in decoded] == [0] * 6
    assert service.stats.decoded_reference == 6 and service.stats.received == 6
    assert bad.stats.sent == 0, "no handshake ever completed, so IMMEDIATE dropped every intruder frame"
    intruder_key = intruder.public.decode()
    assert service.stats.refused_keys[intruder_key] >= 1 and set(service.stats.refused_keys) == {intruder_key}
    assert service.stats.as_dict()["refused_keys"] == dict(service.stats.refused_keys)
    refusals = [r.getMessage() for r in caplog.records if "refused camera key" in r.getMessage()]
    assert len(refusals) == 1 and intruder_key in refusals[0], "logged once per interval, with the key"


def test_plain_host_warns_at_start(stereo: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = host_config_from_dict({"host": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "bundle": str(stereo)}})
    service = HostService.from_config(cfg)
    service.stop()  # run() logs its start-up lines, sees the stop and closes
    with caplog.at_level(logging.INFO, logger="stereodsc.host"):
        service.run()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CURVE off" in warnings[0].getMessage()
    assert service.receiver.refused_keys() == []


def test_curve_pipeline_end_to_end(stereo: Path, keys: Path, tmp_path: Path) -> None:
    """The daemons read [security] from their configs: both cameras allowed, every frame decoded."""
    edge_extra = {cam.camera_id: {"security": _edge_security(keys, f"cam{cam.camera_id}")} for cam in STEREO}
    run = run_pipeline(
        stereo,
        tmp_path / "run",
        frames=3,
        fps=20.0,
        host_extra={"security": _host_security(keys)},
        edge_extra=edge_extra,
    )
    assert run.host_stats["decoded_reference"] == 3 and run.host_stats["decoded_with_side_info"] == 3
    assert run.host_stats["refused_keys"] == {}
    assert "CURVE on" in (tmp_path / "run" / "host.log").read_text()


def test_camera_with_unknown_key_gets_nothing_decoded_end_to_end(stereo: Path, keys: Path, tmp_path: Path) -> None:
    """The reference camera is allowed; the dependent camera runs with the intruder's key."""
    edge_extra = {
        0: {"security": _edge_security(keys, "cam0")},
        1: {"security": _edge_security(keys, "intruder"), "link": {"wait_for_host_s": 2.0}},
    }
    run = run_pipeline(
        stereo,
        tmp_path / "run",
        frames=3,
        fps=5.0,
        host_extra={"security": _host_security(keys)},
        edge_extra=edge_extra,
    )
    assert {r["camera"] for r in run.host_frames} == {0}
    assert run.host_stats["decoded_reference"] == 3 and run.host_stats["decoded_with_side_info"] == 0
    assert not any(r["sent"] for r in run.edge_frames[1])
    intruder_key = load_client_curve(str(keys / "intruder.key_secret"), str(keys / "host.key")).public.decode()
    assert list(run.host_stats["refused_keys"]) == [intruder_key]


def _service(stereo: Path, **host: Any) -> HostService:
    raw = {"host": {"bundle": str(stereo), **host}}
    return HostService.from_config(host_config_from_dict(raw), receiver=InProcessReceiver())


def test_rate_limit_drops_a_flooding_camera_only(stereo: Path) -> None:
    service = _service(stereo, max_frames_per_s_per_camera=2.0)
    try:
        t = time.monotonic()
        for data in _frames(service, 0, 10):  # ten frames at one instant: a burst of 2 passes
            service.handle(data, t)
        for data in _frames(service, 1, 2):  # another camera has its own bucket
            service.handle(data, t)
        assert service.stats.dropped == {"rate_limited": 8} and service.stats.decoded_reference == 4
        service.handle(_frames(service, 0, 11)[10], t + 0.5)  # half a second refills one token
        assert service.stats.decoded_reference == 5
    finally:
        service.close()


def test_max_cameras_per_rig_and_stale_slots(stereo: Path) -> None:
    service = _service(stereo, max_cameras_per_rig=2, stale_after_s=1.0)
    try:
        t = time.monotonic()
        for cam in (0, 1, 2):
            service.handle(_frames(service, cam, 1)[0], t)
        assert service.stats.dropped == {"too_many_cameras": 1} and service.stats.decoded_reference == 2
        service.handle(_frames(service, 2, 1, rig_id=2)[0], t)  # the limit is per rig
        assert service.stats.decoded_reference == 3
        service.handle(_frames(service, 2, 2)[1], t + 2.0)  # cameras 0 and 1 went silent: 2 takes a slot
        assert service.stats.decoded_reference == 4 and set(service.stats.as_dict()["cameras"]) == {"1.1", "1.2", "2.2"}
    finally:
        service.close()


def test_tracked_cameras_are_bounded_in_all(stereo: Path) -> None:
    """A sender making up (rig, camera) ids cannot grow the host's per-camera state without bound."""
    service = _service(stereo)
    service.admission.max_cameras = 2
    try:
        for rig in (1, 2, 3):
            service.handle(_frames(service, 0, 1, rig_id=rig)[0], 0.0)
        assert service.stats.dropped == {"too_many_cameras": 1} and len(service.stats.cameras) == 2
    finally:
        service.close()


def test_silent_cameras_are_reported_stale(stereo: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = _service(stereo, stale_after_s=1.0, stats_every_s=60.0)
    try:
        now = time.monotonic()
        service.handle(_frames(service, 0, 1)[0], now - 5.0)
        service.handle(_frames(service, 1, 1)[0], now)
        cameras = service.stats.as_dict()["cameras"]
        assert cameras["1.0"]["stale"] and cameras["1.0"]["last_seen_s_ago"] >= 5.0
        assert not cameras["1.1"]["stale"]
        with caplog.at_level(logging.WARNING, logger="stereodsc.host"):
            service.check_liveness(now)
            service.check_liveness(now + 0.1)  # once per interval
        assert [r.getMessage() for r in caplog.records if "stale cameras" in r.getMessage()] == [
            "stale cameras (silent > 1.0 s): ['1.0'] (further ones are counted, logged once per interval)"
        ]
    finally:
        service.close()


def test_rate_limits_are_off_by_default_and_validated(stereo: Path) -> None:
    """No rate or per-rig limit by default; staleness (10 s) and the new-camera limit are on: they make
    room for new cameras and never touch a camera that keeps sending."""
    with pytest.raises(ConfigError, match=r"must be >= 0"):
        host_config_from_dict({"host": {"max_frames_per_s_per_camera": -1.0}}, "h.toml")
    with pytest.raises(ConfigError, match=r"must be >= 0"):
        host_config_from_dict({"host": {"new_cameras_per_s": -1.0}}, "h.toml")
    service = _service(stereo)
    try:
        for data in _frames(service, 0, 5):
            service.handle(data, 0.0)
        assert service.stats.decoded_reference == 5 and not service.stats.dropped
        assert service.stats.stale_cameras(9.0) == [] and service.stats.stale_cameras(11.0) == ["1.0"]
    finally:
        service.close()


@pytest.mark.parametrize("name", ["host", "edge"])
def test_deploy_configs_parse(name: str) -> None:
    from stereodsc.edge_encoder.daemon import load_edge_config
    from stereodsc.host_decoder.config import load_host_config

    path = Path(__file__).parent.parent / "deploy" / f"{name}.toml"
    cfg = (load_host_config if name == "host" else load_edge_config)(path)
    assert cfg.security.curve


def test_keys_named_rig_cam_are_bound_to_their_ids(keys: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bound"
    folder.mkdir()
    (folder / "rig1_cam0.key").write_bytes((keys / "cam0.key").read_bytes())
    (folder / "cam1.key").write_bytes((keys / "cam1.key").read_bytes())
    curve = load_server_curve(str(keys / "host.key_secret"), str(folder))
    cam0 = load_client_curve(str(keys / "cam0.key_secret"), str(keys / "host.key")).public.decode()
    assert curve.identities == {cam0: (1, 0)} and curve.unbound == ("cam1.key",) and len(curve.allowed) == 2
    with pytest.raises(ConfigError, match=r"require_bound_keys = true, but cam1\.key .* rename each to rig<R>_cam<C>"):
        load_server_curve(str(keys / "host.key_secret"), str(folder), require_bound=True)
    (folder / "rig1_cam5.key").write_bytes((keys / "cam0.key").read_bytes())
    with pytest.raises(ConfigError, match="one key, one camera"):
        load_server_curve(str(keys / "host.key_secret"), str(folder))


def test_a_frame_whose_ids_are_not_its_keys_is_rejected_and_counted(
    stereo: Path, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cam0's key is bound to rig 1 camera 0: as camera 0 it is decoded, as camera 5 (impersonation, or an
    id flood) rejected. cam1's key is unbound: any ids pass, as before keys were bound (logged at start)."""
    folder = tmp_path / "bound"
    folder.mkdir()
    (folder / "rig1_cam0.key").write_bytes((keys / "cam0.key").read_bytes())
    (folder / "cam1.key").write_bytes((keys / "cam1.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    security = {**_host_security(keys), "allowed_keys": str(folder)}
    cfg = host_config_from_dict({"host": {"endpoint": endpoint, "bundle": str(stereo)}, "security": security})
    with caplog.at_level(logging.WARNING, logger="stereodsc.host"):
        service = HostService.from_config(cfg)
    assert any("cam1.key" in r.getMessage() and "rig<R>_cam<C>.key" in r.getMessage() for r in caplog.records)
    bound = load_client_curve(str(keys / "cam0.key_secret"), str(keys / "host.key"))
    unbound = load_client_curve(str(keys / "cam1.key_secret"), str(keys / "host.key"))
    frames = _frames(service, 0, 3) + _frames(service, 5, 3)
    with FrameSender(endpoint, curve=bound) as a, FrameSender(endpoint, curve=unbound) as b:
        try:
            _serve(service, [(a, frames), (b, _frames(service, 7, 3))], seconds=30)
            deadline = time.monotonic() + 10
            while service.stats.received < 9 and time.monotonic() < deadline:
                data = service.receiver.recv(timeout_ms=50)
                if data is not None:
                    service.handle(data, time.monotonic())
        finally:
            service.close()
    assert service.stats.rejected == {"KeyMismatch": 3}
    assert service.stats.decoded_reference == 6 and set(service.stats.cameras) == {(1, 0), (1, 7)}


def test_a_refused_camera_rehandshakes_once_its_key_is_allowed(keys: Path) -> None:
    """libzmq never retries a refused handshake: the camera opens a new socket after rehandshake_ms without
    a connection, says why it dropped frames, and gets through once the restarted host allows its key."""
    from stereodsc.transport import FrameReceiver

    host = load_server_curve(str(keys / "host.key_secret"), str(keys / "allowed"))
    intruder = load_client_curve(str(keys / "intruder.key_secret"), str(keys / "host.key"))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with FrameSender(endpoint, curve=intruder, rehandshake_ms=200, rehandshake_max_ms=400) as sender:
        with FrameReceiver(endpoint, curve=host) as refusing:
            deadline = time.monotonic() + 10
            while not refusing.refused_keys() and time.monotonic() < deadline:
                sender.send(b"x")
                time.sleep(0.02)
            for _ in range(20):
                assert not sender.send(b"x")
                time.sleep(0.02)
        assert sender.stats.dropped_by["refused_key"] > 0 and sender.last_drop == "refused_key"
        allowed = type(host)(host.public, host.secret, host.allowed | {intruder.public}, host.allowed_dir)
        with FrameReceiver(endpoint, curve=allowed) as receiver:
            got = None
            deadline = time.monotonic() + 20
            while got is None and time.monotonic() < deadline:
                sender.send(b"let in")
                got = receiver.recv(timeout_ms=20)
            assert got == b"let in" and got.envelope.key == intruder.public.decode()
            assert sender.stats.rehandshakes >= 1 and sender.down_reason is None
