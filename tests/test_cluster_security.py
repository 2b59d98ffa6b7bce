"""Who can reach the cluster: the local one only from this machine's loopback; a remote one over
mutual TLS. A Dask scheduler or worker runs any code a connected client sends, so an open port is
remote code execution. Real processes and real sockets throughout."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
from click.testing import CliRunner
from test_segment import VENV_BIN, _start, _stop, small_frames
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.store import MaskStore

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _host(address: str) -> str:
    """'tcp://127.0.0.1:4000' or 'http://127.0.0.1:4000/status' -> '127.0.0.1'."""
    return urlparse(address).hostname


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def _non_loopback_ipv4() -> str | None:
    """An address of this machine that another machine would use to reach it."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        return None
    return None if ipaddress.ip_address(ip).is_loopback else ip


@pytest.mark.parametrize("dashboard", ["127.0.0.1:0", None], ids=["dashboard", "no-dashboard"])
def test_local_cluster_listens_on_loopback_only(dashboard):
    # Dask serves HTTP (metrics, health, a proxy) even without a dashboard; before the fix every
    # listener below was on 0.0.0.0 / the machine's address, with or without --no-dashboard.
    before = _listening(os.getpid())
    with open_cluster(ClusterConfig(workers=2, gpus=[], dashboard=dashboard)) as client:
        client.wait_for_workers(2)
        info = client.scheduler_info()
        workers = info["workers"]
        named = [info["address"], client.dashboard_link, *workers,
                 *(w["nanny"] for w in workers.values())]
        # scheduler, dashboard and nannies live in this process; each worker in its own
        opened = _listening(os.getpid()) - before
        for pid in client.run(os.getpid).values():
            opened |= _listening(pid)
    assert len(named) == 6 and all(_host(a) == "127.0.0.1" for a in named), named
    # scheduler + its HTTP server + 2 nannies + 2 x (worker + its HTTP server)
    assert len(opened) >= 8, opened
    assert all(ipaddress.ip_address(ip) == LOOPBACK for ip, _ in opened), sorted(opened)


def test_local_cluster_refuses_connections_to_the_machines_address():
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with open_cluster(ClusterConfig(workers=1, gpus=[])) as client:
        client.wait_for_workers(1)
        info = client.scheduler_info()
        ports = {urlparse(a).port for a in [info["address"], client.dashboard_link, *info["workers"]]}
        # the same ports answer on loopback...
        for port in ports:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # ...and are refused on the address the rest of the network sees
        for port in ports:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((ip, port), timeout=2)


# --- TLS ---------------------------------------------------------------------------------------


def _write_tls_files(dest: Path, name: str) -> dict[str, Path]:
    """A throwaway CA and one certificate it signed (for 127.0.0.1 and localhost, usable as
    server and client, as Dask uses one certificate per process for both directions)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    dest.mkdir(parents=True, exist_ok=True)

    def cert(subject, key, issuer, issuer_key, ca: bool, extra=()):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False))
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert(f"{name} CA", ca_key, f"{name} CA", ca_key, ca=True, extra=[
        x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                      data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                      encipher_only=False, decipher_only=False)])
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert("unsamflow test", key, f"{name} CA", ca_key, ca=False, extra=[
        x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(LOOPBACK)]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])])
    files = {"ca": dest / "ca.pem", "cert": dest / "cert.pem", "key": dest / "key.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    files["key"].chmod(0o600)
    return files


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> dict[str, Path]:
    return _write_tls_files(tmp_path_factory.mktemp("tls"), "unsamflow test")


def _tls_args(files: dict[str, Path]) -> list[str]:
    return ["--tls-ca", str(files["ca"]), "--tls-cert", str(files["cert"]), "--tls-key", str(files["key"])]


def _tls_config(files: dict[str, Path]) -> ClusterConfig:
    return ClusterConfig(tls_ca=str(files["ca"]), tls_cert=str(files["cert"]), tls_key=str(files["key"]))


def test_tls_options_are_checked_before_any_work(tls, tmp_path):
    def segment(*extra):
        return CliRunner().invoke(main, ["segment", "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                                         *extra])

    partial = segment("--tls-cert", str(tls["cert"]))
    assert partial.exit_code == 2
    assert "--tls-cert also needs --tls-ca and --tls-key" in partial.output

    gone = tmp_path / "no-such-key.pem"
    missing = segment("--tls-ca", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(gone))
    assert missing.exit_code == 2 and f"--tls-key: file not found: {gone}" in missing.output

    other_key = _write_tls_files(tmp_path / "other", "other")["key"]
    mismatch = segment("--tls-ca", str(tls["ca"]), "--tls-cert", str(tls["cert"]),
                       "--tls-key", str(other_key))
    assert mismatch.exit_code == 2 and "unusable TLS files" in mismatch.output, mismatch.output

    clear = segment("--scheduler", "tcp://127.0.0.1:8786", *_tls_args(tls))
    assert clear.exit_code == 2
    assert "--scheduler tcp://127.0.0.1:8786: TLS options need a tls:// address" in clear.output

    # `run` shares the options: the check comes before its manifest stage writes anything
    run = CliRunner().invoke(main, ["run", "--layout", "folder", "--root", str(tmp_path),
                                    "--out", str(tmp_path / "run"), "--tls-ca", str(tls["ca"])])
    assert run.exit_code == 2 and "--tls-ca also needs --tls-cert and --tls-key" in run.output
    assert not (tmp_path / "run").exists()


def test_local_cluster_speaks_tls_when_given_files(tls):
    cfg = _tls_config(tls)
    cfg.workers, cfg.gpus, cfg.dashboard = 1, [], None
    with open_cluster(cfg) as client:
        client.wait_for_workers(1)
        info = client.scheduler_info()
        addresses = [info["address"], *info["workers"], *(w["nanny"] for w in info["workers"].values())]
        assert all(a.startswith("tls://127.0.0.1:") for a in addresses), addresses
        assert client.submit(sum, [1, 2]).result() == 3
        # a client without the files cannot get in
        with pytest.raises(BadInputError, match="speaks TLS, but no TLS files are set"), \
                open_cluster(ClusterConfig(scheduler=info["address"], connect_timeout="2s")):
            pass


@pytest.fixture
def tls_cluster(tls, tmp_path):
    """`dask scheduler` and `dask worker` as separate processes on 127.0.0.1, mutual TLS only."""
    tls_flags = ["--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]),
                 "--tls-key", str(tls["key"])]
    sched_file = tmp_path / "scheduler.json"
    procs = [_start([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--protocol", "tls", *tls_flags, "--no-dashboard", "--scheduler-file", str(sched_file)],
                    tmp_path / "sched.log")]
    try:
        for _ in range(150):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.2)
        else:
            pytest.fail("dask scheduler did not start: " + (tmp_path / "sched.log").read_text())
        address = json.loads(sched_file.read_text())["address"]
        procs.append(_start([str(VENV_BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                             "--no-dashboard", "--host", "127.0.0.1", *tls_flags], tmp_path / "worker.log"))
        yield address
    finally:
        _stop(procs)


def test_segment_cli_on_a_tls_scheduler(shared_data, tls, tls_cluster, tmp_path):
    address = tls_cluster
    assert address.startswith("tls://127.0.0.1:")
    frames = small_frames(shared_data, tmp_path / "data" / "judo", n=2, scale=0.25)
    manifest = Manifest("folder", str(tmp_path / "data"), [Frame(f"judo/{p.name}", "judo") for p in frames],
                        meta={"shard": 0, "num_shards": 1})
    manifest.save(tmp_path / "shards" / "shard-00000-of-00001.json")
    stores = tmp_path / "stores"

    # Without the files: refused at once with what to give, not a hang.
    t0 = time.monotonic()
    bare = CliRunner().invoke(main, ["segment", "--shards", str(tmp_path / "shards"), "--out", str(stores),
                                     "--scheduler", address])
    assert bare.exit_code == 2 and "speaks TLS, but no TLS files are set" in bare.output, bare.output
    assert time.monotonic() - t0 < 5
    # Clear text to the TLS port: the scheduler resets it (measured: at once); the short connect
    # timeout bounds it in any case.
    t0 = time.monotonic()
    clear = ClusterConfig(scheduler=address.replace("tls://", "tcp://"), connect_timeout="2s")
    hint = "cannot reach Dask scheduler at tcp://.*if that scheduler uses TLS"
    with pytest.raises(BadInputError, match=hint), open_cluster(clear):
        pass
    assert time.monotonic() - t0 < 15
    # A certificate from another CA is turned away by the scheduler.
    rogue = _write_tls_files(tmp_path / "rogue", "rogue")
    cfg = _tls_config(rogue)
    cfg.scheduler, cfg.connect_timeout = address, "2s"
    with pytest.raises(BadInputError, match="cannot reach Dask scheduler at tls://"), open_cluster(cfg):
        pass
    assert not stores.exists()

    result = CliRunner().invoke(main, ["segment", "--shards", str(tmp_path / "shards"), "--out", str(stores),
                                       "--scheduler", address, *_tls_args(tls), "--retries", "0"])
    assert result.exit_code == 0, result.output
    ms = MaskStore(stores / "shard-00000-of-00001.h5")
    assert sorted(ms.frame_ids) == sorted(manifest.frame_ids)
    ms.close()

    # No TLS options, but Dask's own config holds the files: that is used.
    import dask

    with dask.config.set({"distributed.comm.tls.ca-file": str(tls["ca"]),
                          "distributed.comm.tls.client.cert": str(tls["cert"]),
                          "distributed.comm.tls.client.key": str(tls["key"])}), \
            open_cluster(ClusterConfig(scheduler=address, connect_timeout="10s")) as client:
        assert client.submit(sum, [2, 3]).result() == 5
        # the shard ran in the external worker, which also listens on loopback over TLS only
        ran = client.run(lambda: "unsamflow.pipeline.segment" in sys.modules)
        assert list(ran.values()) == [True] and next(iter(ran)).startswith("tls://127.0.0.1:"), ran


def test_slurm_dashboard_on_loopback_and_tls_auto_makes_private_files(tmp_path):
    """Before: a SLURM cluster's dashboard listened on 0.0.0.0:8787, and TLS for SLURM took six openssl
    commands. The dashboard is on loopback unless asked otherwise; --tls-auto makes a throw-away CA
    and certificate in the output folder, readable by the user only (the CA's key is not kept)."""
    import stat

    from test_reliability import frames, one_shard
    from unsamflow.pipeline.cluster import slurm_cluster

    pytest.importorskip("dask_jobqueue")
    cluster, _ = slurm_cluster({"jobs": 1})
    try:
        assert cluster.scheduler_spec["options"]["dashboard_address"] == f"{LOOPBACK}:8787"
        bound = [s.getsockname()[0] for s in cluster.scheduler.http_server._sockets.values()]
        assert bound == [str(LOOPBACK)], bound  # jobqueue's own default: 0.0.0.0
    finally:
        cluster.close()

    root = tmp_path / "data"
    shard = one_shard(root, frames(root, [(16, 16)]), tmp_path / "shards")
    out = tmp_path / "st"
    res = CliRunner().invoke(main, ["segment", "--shards", str(shard), "--out", str(out), "--tls-auto",
                                    "--workers", "1", "--no-dashboard", "-q"])
    assert res.exit_code == 0, res.output
    tls_dir = out / "tls"
    assert sorted(p.name for p in tls_dir.iterdir()) == ["ca.pem", "node.key", "node.pem"]
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tls_dir.iterdir())
    files = _tls_config({"ca": tls_dir / "ca.pem", "cert": tls_dir / "node.pem", "key": tls_dir / "node.key"})
    files.workers, files.gpus, files.dashboard = 1, [], None
    with open_cluster(files) as client:  # the files make a working mutual-TLS cluster
        assert client.scheduler_info()["address"].startswith("tls://127.0.0.1:")
    before = (tls_dir / "node.pem").read_bytes()
    res = CliRunner().invoke(main, ["run", "--manifest", str(shard), "--out", str(tmp_path / "run"),
                                    "--tls-auto", "--tls-ca", str(tls_dir / "ca.pem")])
    assert res.exit_code == 2 and "either --tls-auto or --tls-ca" in res.output, res.output
    CliRunner().invoke(main, ["segment", "--shards", str(shard), "--out", str(out), "--tls-auto", "-q"])
    assert (tls_dir / "node.pem").read_bytes() == before  # valid files are reused
