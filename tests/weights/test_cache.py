"""minimaskrcnn.hub: official weights by name through the real download code, against a local HTTP server.

The server binds 127.0.0.1 only, serves a checkpoint the test generates (a small torchvision detector), counts its
requests and can misbehave (wrong bytes, truncated body, 404/500, stalls). Because a generated file cannot match an
official hash prefix, the tests inject a registry naming the generated file with its own prefix: the code path is the
one the official names take.
"""
import hashlib
import http.server
import threading
import time

import numpy as np
import pytest

import oracle
from minimaskrcnn.weights import cache as hub
from minimaskrcnn.weights.cache import WeightsError, load_weights, resolve_weights
from checkpoints import save, small_detector
from weights_convert import OFFICIAL_V1_SHA256_PREFIXES, read_npz, read_npz_metadata

NAME = "tiny_fasterrcnn_coco"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small Faster R-CNN saved by torch in float16 (half the bytes to serve), and its registry entry."""
    torch = oracle.torch()
    sd = {k: v.half() if v.is_floating_point() else v for k, v in small_detector(masks=False).state_dict().items()}
    path = save(sd, tmp_path_factory.mktemp("ckpt") / "tiny.pth", "zip")
    data = path.read_bytes()
    filename = f"tiny_fasterrcnn_coco-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    assert torch.load(path)["rpn.head.cls_logits.bias"].dtype == torch.float16
    return {"path": path, "data": data, "filename": filename, "registry": {NAME: filename}}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        state = self.server.state
        state.requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        behaviour, body = state.behaviour, state.files.get(name)
        if body is None or behaviour in (404, 500):
            self.send_error(404 if body is None else behaviour)
            return
        if behaviour == "wrong_bytes":
            body = b"an HTML error page, a captive portal, or a tampered file" * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if behaviour == "stall":
                time.sleep(2.0)
            elif behaviour == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):     # the client gave up (timeout test)
            self.close_connection = True

    def log_message(self, *args):
        pass


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 (port chosen by the OS) in a thread; `requests` lists the paths asked."""

    def __init__(self, files):
        self.files, self.requests, self.behaviour = files, [], "ok"
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(10)
        self.httpd.server_close()


@pytest.fixture
def server(checkpoint, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(hub.URL_ENV, raising=False)
    s = Server({checkpoint["filename"]: checkpoint["data"]})
    yield s
    s.stop()


def fetch(checkpoint, server, home, **kwargs):
    return resolve_weights(NAME, cache_dir=home, base_url=server.url, registry=checkpoint["registry"],
                           timeout=kwargs.pop("timeout", 10), **kwargs)


def cache_files(home):
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) if home.exists() else []


# --- success ---------------------------------------------------------------------------------------------------------

def test_download_verify_convert_then_reuse_without_network(checkpoint, server, tmp_path):
    home = tmp_path / "home"
    path = fetch(checkpoint, server, home)
    stem = checkpoint["filename"][:-4]
    assert path == home / "converted" / f"{stem}.npz"
    assert server.requests == [f"/models/{checkpoint['filename']}"]
    assert cache_files(home) == [f"checkpoints/{checkpoint['filename']}", f"converted/{stem}.npz"]
    assert (home / "checkpoints" / checkpoint["filename"]).read_bytes() == checkpoint["data"]
    meta = read_npz_metadata(path)
    assert meta["source_name"] == checkpoint["filename"]
    assert meta["source_sha256"] == hashlib.sha256(checkpoint["data"]).hexdigest()
    config, arrays = read_npz(path)
    assert config.masks is False and config.num_classes == 5 and arrays["rpn.head.cls_logits.bias"].dtype == np.float16

    assert fetch(checkpoint, server, home) == path          # converted file reused: no request
    server.stop()
    assert fetch(checkpoint, server, home) == path          # and the server is not needed any more
    assert len(server.requests) == 1


def test_home_and_url_from_the_environment(checkpoint, server, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.HOME_ENV, str(tmp_path / "envhome"))
    monkeypatch.setenv(hub.URL_ENV, server.url)
    path = resolve_weights(NAME, registry=checkpoint["registry"], progress=False)
    assert path.parent == tmp_path / "envhome" / "converted" and path.is_file()
    assert len(server.requests) == 1


def test_stale_converted_file_is_remade_from_the_kept_checkpoint(checkpoint, server, tmp_path):
    home = tmp_path / "home"
    path = fetch(checkpoint, server, home)
    path.write_bytes(b"a converted file of another format version")
    server.stop()
    assert fetch(checkpoint, server, home) == path
    assert read_npz(path)[0].num_classes == 5 and len(server.requests) == 1


def test_load_weights_by_name(checkpoint, server, tmp_path):
    config, arrays = load_weights(NAME, cache_dir=tmp_path, base_url=server.url, registry=checkpoint["registry"])
    assert config.resnet_depth == 18 and "backbone.body.conv1.weight" in arrays


def test_progress_bar_only_when_asked_or_on_a_terminal(checkpoint, server, tmp_path, capsys):
    fetch(checkpoint, server, tmp_path / "a", progress=True)
    err = capsys.readouterr().err
    assert f"downloading {NAME}" in err and "100%" in err and err.endswith("\n")
    fetch(checkpoint, server, tmp_path / "b")                   # progress=None and stderr is not a terminal
    assert capsys.readouterr().err == ""


# --- failures leave nothing behind -----------------------------------------------------------------------------------

@pytest.mark.parametrize("behaviour, message", [
    ("wrong_bytes", r"but its sha256 is [0-9a-f]{16}\.\.\., not {prefix}\.\.\. as its name says"),
    ("truncate", r"the connection closed early, \d+ bytes short \(truncated download\)"),
    (404, r"HTTP 404 Not Found"),
    (500, r"HTTP 500 Internal Server Error"),
])
def test_failed_downloads_raise_one_line_and_leave_no_file(checkpoint, server, tmp_path, behaviour, message):
    home = tmp_path / "home"
    server.behaviour = behaviour
    with pytest.raises(WeightsError) as e:
        fetch(checkpoint, server, home)
    text = str(e.value)
    prefix = checkpoint["filename"][-12:-4]
    import re
    assert re.search(message.replace("{prefix}", prefix), text), text
    assert "\n" not in text and f"{server.url}{checkpoint['filename']}" in text
    assert cache_files(home) == []
    assert len(server.requests) == 1


def test_connection_refused_says_what_where_and_how_to_work_offline(checkpoint, server, tmp_path):
    server.stop()                                               # nothing listens on that port any more
    with pytest.raises(WeightsError) as e:
        fetch(checkpoint, server, tmp_path / "home")
    text = str(e.value)
    assert text.startswith(f"could not download {NAME} from {server.url}{checkpoint['filename']}: ")
    assert "refused" in text.lower()
    assert f"--weights path/to/{checkpoint['filename']} (or a converted .npz)" in text
    assert cache_files(tmp_path / "home") == []


def test_socket_timeout(checkpoint, server, tmp_path):
    server.behaviour = "stall"
    start = time.monotonic()
    with pytest.raises(WeightsError, match=r"no answer within 0.3 s \(timed out\)"):
        fetch(checkpoint, server, tmp_path / "home", timeout=0.3)
    assert time.monotonic() - start < 1.9 and cache_files(tmp_path / "home") == []


def test_official_names_use_the_official_url_and_prefixes(tmp_path, monkeypatch):
    """The official names reach the same download call with torchvision's URL and the hash prefix of the name."""
    calls = []

    def no_network(url, dest, *, sha256_prefix, what=None, progress=None, timeout=None):
        calls.append((url, dest.name, sha256_prefix, what))
        raise WeightsError("not in tests")
    monkeypatch.setattr(hub, "download", no_network)
    monkeypatch.delenv(hub.URL_ENV, raising=False)
    official = [("maskrcnn_resnet50_fpn_coco", "bf2d0c1e"), ("fasterrcnn_resnet50_fpn_coco", "258fb6c6"),
                ("maskrcnn_resnet50_fpn_v2_coco", "73cbd019"), ("fasterrcnn_resnet50_fpn_v2_coco", "dd69338a")]
    for name, prefix in official:
        with pytest.raises(WeightsError):
            resolve_weights(name, cache_dir=tmp_path)
        filename = f"{name}-{prefix}.pth"
        assert calls[-1] == (f"https://download.pytorch.org/models/{filename}", filename, prefix, name)
    # the two v1 files are exactly the ones whose converted eps is 0.0 (weights_convert.convert)
    v1 = {hub.expected_sha256_prefix(hub.OFFICIAL_WEIGHTS[n]) for n in hub.OFFICIAL_WEIGHTS if "_v2" not in n}
    assert v1 == set(OFFICIAL_V1_SHA256_PREFIXES)


# --- local files -----------------------------------------------------------------------------------------------------

def test_local_checkpoint_converted_once_keyed_by_sha256(checkpoint, tmp_path, monkeypatch):
    home = tmp_path / "home"
    src = tmp_path / "my model.pth"
    src.write_bytes(checkpoint["data"])
    path = resolve_weights(src, cache_dir=home)
    sha = hashlib.sha256(checkpoint["data"]).hexdigest()
    assert path == home / "converted" / f"sha256-{sha}.npz"
    assert read_npz_metadata(path)["source_name"] == "my model.pth"

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted twice")
    monkeypatch.setattr("weights_convert.convert", must_not_convert)
    copy = tmp_path / "same bytes, other name.pt"
    copy.write_bytes(checkpoint["data"])
    assert resolve_weights(str(src), cache_dir=home) == path
    assert resolve_weights(copy, cache_dir=home) == path


def test_npz_path_returned_after_a_cheap_check(checkpoint, tmp_path):
    converted = resolve_weights(checkpoint["path"], cache_dir=tmp_path / "home")
    assert resolve_weights(converted) == converted
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(1))
    with pytest.raises(WeightsError, match="other.npz is not a minimaskrcnn weights file"):
        resolve_weights(other)


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(WeightsError, match="unknown weights 'maskrcnn_resnet50': give one of "
                                           "maskrcnn_resnet50_fpn_coco, fasterrcnn_resnet50_fpn_coco"):
        resolve_weights("maskrcnn_resnet50", cache_dir=tmp_path)
    with pytest.raises(WeightsError, match="no such weights file: .*nothere.pth"):
        resolve_weights(tmp_path / "nothere.pth", cache_dir=tmp_path)
    notes = tmp_path / "notes.pth"
    notes.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="cannot convert .*notes.pth: notes.pth is not a PyTorch checkpoint"):
        resolve_weights(notes, cache_dir=tmp_path / "home")
    assert cache_files(tmp_path / "home") == []
