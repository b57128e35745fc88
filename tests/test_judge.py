"""The judge client (``vidinterp.evaluation.judge``) against a local chat-completions server on
127.0.0.1: the request contract, retries, error messages, reply parsing, and MLS end to end."""

from __future__ import annotations

import base64
import email.utils
import io
import json
import socket
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from vidinterp.evaluation.judge import (JudgeError, JudgeReplyError, OpenAICompatibleJudge, ask_scores,
                                        exponential_backoff, parse_scores)
from vidinterp.evaluation.mls import judge_prompt, motion_localisation_score, render_mls_grids

KEYS = ["SL", "TL", "PR", "SS", "OBJ"]
GOOD = '{"SL": 4, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1}'


def completion(text):
    """A chat-completions response body whose reply is ``text``."""
    return json.dumps({"id": "x", "object": "chat.completion", "model": "judge-model",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]})


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        status, headers, text = self.server.script.pop(0) if self.server.script else (500, {}, "no scripted reply")
        payload = text.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Requests to 127.0.0.1 must not go through a proxy the environment names."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    """A chat-completions server on 127.0.0.1 answering from ``server.script`` ((status, headers,
    body) per request) and recording ``server.requests``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script, httpd.requests = [], []
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def make_judge(server, sleeps, **options):
    return OpenAICompatibleJudge(server.base_url, "judge-model", sleep=sleeps.append, **options)


def test_mls_end_to_end_and_request_contract(server):
    rng = np.random.default_rng(0)
    frames, saliency = rng.integers(0, 256, (20, 8, 12, 3), dtype=np.uint8), rng.random((20, 2, 3))
    server.script = [(200, {}, completion(f"Here you go:\n```json\n{GOOD}\n```"))]
    judge = make_judge(server, [], api_key="sk-test")
    result = motion_localisation_score(frames, saliency, caption="a cat jumps", concept="jumps", judge=judge)
    assert result.raw_scores == {"SL": 4, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1}
    assert result.scores == {"SL": 0.75, "TL": 0.25, "PR": 1.0, "SS": 0.5, "OBJ": 0.0}
    assert result.average == pytest.approx(0.5) and result.replies == [f"Here you go:\n```json\n{GOOD}\n```"]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    (message,) = body["messages"]
    assert message["role"] == "user"
    text, *images = message["content"]
    assert text == {"type": "text", "text": judge_prompt("a cat jumps", "jumps")}
    grids = render_mls_grids(frames, saliency)
    assert len(images) == 3
    for part, grid in zip(images, (grids.raw, grids.overlay, grids.heatmap)):
        assert part["type"] == "image_url"
        prefix, data = part["image_url"]["url"].split(",", 1)
        assert prefix == "data:image/png;base64"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))), grid)


def test_no_key_no_authorization_and_optional_temperature(server):
    server.script = [(200, {}, completion("ok"))]
    assert make_judge(server, [], temperature=None).ask("hello", []) == "ok"
    (request,) = server.requests
    assert "Authorization" not in request["headers"] and "temperature" not in request["body"]
    assert request["body"]["messages"][0]["content"] == [{"type": "text", "text": "hello"}]


def test_retries_5xx_and_429_with_retry_after(server):
    sleeps = []
    server.script = [(503, {}, "overloaded"), (200, {}, completion("first"))]
    assert make_judge(server, sleeps).ask("p", []) == "first"
    assert sleeps == [exponential_backoff(1)] == [1.0]
    server.script = [(429, {"Retry-After": "7"}, "slow down"), (500, {}, "oops"), (200, {}, completion("second"))]
    sleeps.clear()
    assert make_judge(server, sleeps).ask("p", []) == "second"
    assert sleeps == [7.0, exponential_backoff(2)]
    past = email.utils.format_datetime(datetime(2000, 1, 1, tzinfo=timezone.utc), usegmt=True)
    server.script = [(503, {"Retry-After": past}, "busy"), (200, {}, completion("third"))]
    sleeps.clear()
    assert make_judge(server, sleeps).ask("p", []) == "third" and sleeps == [0.0]  # an HTTP date already passed
    assert len(server.requests) == 7


def test_retries_exhausted_and_client_errors_name_url_status_and_body(server):
    sleeps = []
    server.script = [(500, {}, "down"), (502, {}, "down"), (503, {}, "still down")]
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1:\d+/v1/chat/completions failed 3 times.*HTTP 503: still down"):
        make_judge(server, sleeps, retries=2).ask("p", [])
    assert sleeps == [1.0, 2.0]
    sleeps.clear()
    server.script = [(401, {}, '{"error": "invalid api key"}')]
    with pytest.raises(JudgeError, match=r"/v1/chat/completions refused the request with HTTP 401: .*invalid api key"):
        make_judge(server, sleeps).ask("p", [])
    assert sleeps == [] and len(server.requests) == 4  # a 4xx is not retried
    server.script = [(200, {}, '{"error": "model not found"}')]
    with pytest.raises(JudgeError, match=r"did not return a chat completion.*model not found"):
        make_judge(server, sleeps).ask("p", [])


def test_connection_refused_is_retried_then_fails():
    with socket.socket() as probe:  # a free port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = []
    judge = OpenAICompatibleJudge(f"http://127.0.0.1:{port}/v1", "m", retries=1, timeout=5, sleep=sleeps.append)
    with pytest.raises(JudgeError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 2 times.*connection failed"):
        judge.ask("p", [])
    assert sleeps == [1.0]


def test_unparseable_reply_is_asked_again(server):
    server.script = [(200, {}, completion("The map looks good overall.")),
                     (200, {}, completion('{"SL": 9, "TL": 1, "PR": 1, "SS": 1, "OBJ": 1}')),
                     (200, {}, completion(GOOD))]
    scores, replies = ask_scores(make_judge(server, []), "p", [b"png"], KEYS)
    assert scores == {"SL": 4, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1} and len(replies) == 3 == len(server.requests)
    server.script = [(200, {}, completion("no scores, sorry"))] * 2
    with pytest.raises(JudgeReplyError, match="no parseable reply in 2 requests.*no scores, sorry"):
        ask_scores(make_judge(server, []), "p", [], KEYS, attempts=2)


def test_parse_scores():
    expected = {"SL": 4, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1}
    assert parse_scores(GOOD, KEYS) == expected
    assert parse_scores(f"Sure.\n```json\n{GOOD}\n```\nThat is all.", KEYS) == expected
    assert parse_scores('{"note": "first"} then {"SL": 4.0, "TL": "2", "PR": 5, "SS": 3, "OBJ": 1, "why": "x"}',
                        KEYS) == expected  # the first object with every key; integral floats and strings
    for bad, message in [('{"SL": 4.5, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1}', "'SL' must be an integer in"),
                         ('{"SL": 0, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1}', r"\[1, 5\]; got 0"),
                         ('{"SL": true, "TL": 2, "PR": 5, "SS": 3, "OBJ": 1}', "got True"),
                         ('{"SL": 4, "TL": 2}', "no JSON object with the keys"),
                         ("SL=4 TL=2", "SL=4 TL=2")]:
        with pytest.raises(JudgeReplyError, match=message):
            parse_scores(bad, KEYS)


def test_from_environment():
    judge = OpenAICompatibleJudge.from_environment({"VIDINTERP_JUDGE_URL": "http://localhost:11434/v1",
                                                    "VIDINTERP_JUDGE_MODEL": "qwen2.5vl:7b"})
    assert judge.url == "http://localhost:11434/v1/chat/completions" and judge.api_key is None
    judge = OpenAICompatibleJudge.from_environment({"OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "k",
                                                    "VIDINTERP_JUDGE_MODEL": "gpt-4o"}, retries=5)
    assert (judge.url, judge.model, judge.api_key, judge.retries) == (
        "https://api.openai.com/v1/chat/completions", "gpt-4o", "k", 5)
    with pytest.raises(ValueError, match=r"VIDINTERP_JUDGE_URL \(or OPENAI_BASE_URL\), VIDINTERP_JUDGE_MODEL"):
        OpenAICompatibleJudge.from_environment({})
    with pytest.raises(ValueError, match="http:// or https://"):
        OpenAICompatibleJudge("localhost:11434/v1", "m")
