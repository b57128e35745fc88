"""A vision-language judge behind one small protocol, and an OpenAI-compatible HTTP client for it.

:class:`Judge` is anything with ``ask(prompt, images) -> reply``. :class:`OpenAICompatibleJudge`
speaks the chat-completions API that OpenAI, vLLM (``vllm serve``), Ollama
(``http://localhost:11434/v1``) and hosted endpoints serve, with the standard
library only. :func:`ask_scores` asks for a JSON object of integer scores and parses the reply,
asking again when it cannot.
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

__all__ = ["Judge", "OpenAICompatibleJudge", "JudgeError", "JudgeReplyError", "exponential_backoff",
           "parse_scores", "ask_scores"]


class JudgeError(RuntimeError):
    """The judge could not be reached or refused the request; the message names the URL, the
    HTTP status and an excerpt of the response body where there was one."""


class JudgeReplyError(ValueError):
    """The judge's reply does not hold the scores asked for; the message includes the raw reply."""


@runtime_checkable
class Judge(Protocol):
    """A vision-language model that answers a text prompt about images."""

    def ask(self, prompt: str, images: Sequence[bytes]) -> str:
        """Send ``prompt`` followed by ``images`` (PNG bytes, in order); return the reply text."""
        ...


def exponential_backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): 1, 2, 4, ... capped at 30."""
    return min(2.0 ** (attempt - 1), 30.0)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no zone named
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _excerpt(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


class OpenAICompatibleJudge:
    """A judge served over the OpenAI chat-completions API.

    Each :meth:`ask` POSTs ``{base_url}/chat/completions`` with ``{"model", "messages":
    [{"role": "user", "content": [{"type": "text", ...}, {"type": "image_url", "image_url":
    {"url": "data:image/png;base64,..."}}, ...]}], "temperature"}``, an ``Authorization: Bearer``
    header when an API key is set, and returns ``choices[0].message.content``.

    Connection errors, timeouts, HTTP 429 and 5xx are retried up to ``retries`` times, waiting
    ``backoff(attempt)`` seconds, or the server's ``Retry-After`` when it sends one; any other
    HTTP error fails at once.

    Args:
        base_url: the API root, e.g. ``"http://localhost:11434/v1"`` (Ollama),
            ``"http://localhost:8000/v1"`` (vLLM), ``"https://api.openai.com/v1"``.
        model: the model name the server knows (e.g. ``"qwen2.5vl:7b"``, ``"gpt-4o"``).
        api_key: sent as a bearer token; ``None`` sends no ``Authorization`` header.
        timeout: seconds per request.
        retries: how many times a failed request is sent again (0: once only).
        backoff: seconds to wait before retry ``attempt`` (1-based).
        temperature: sampling temperature, 0 for repeatable scores; ``None`` leaves it out (for
            models that accept only their default, such as OpenAI's o-series).
        sleep: the wait function (tests pass a recorder).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: Callable[[int], float] = exponential_backoff,
                 temperature: float | None = 0.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if not re.match(r"https?://", base_url or ""):
            raise ValueError(f"base_url must start with http:// or https://; got {base_url!r}")
        if not model:
            raise ValueError("model must name the judge model the server serves; got an empty name")
        if retries < 0:
            raise ValueError(f"retries must be >= 0; got {retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries = model, api_key, timeout, retries
        self.backoff, self.temperature, self.sleep = backoff, temperature, sleep

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **options) -> OpenAICompatibleJudge:
        """A judge configured by environment variables.

        ``VIDINTERP_JUDGE_URL`` (else ``OPENAI_BASE_URL``) is the base URL,
        ``VIDINTERP_JUDGE_MODEL`` the model, ``VIDINTERP_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``)
        the optional key. ``options`` go to the constructor (``timeout``, ``retries``, ...).

        Raises:
            ValueError: the URL or the model is not set; the message names the variables.
        """
        environ = os.environ if environ is None else environ
        base_url = environ.get("VIDINTERP_JUDGE_URL") or environ.get("OPENAI_BASE_URL")
        model = environ.get("VIDINTERP_JUDGE_MODEL")
        missing = [name for name, value in (("VIDINTERP_JUDGE_URL (or OPENAI_BASE_URL)", base_url),
                                            ("VIDINTERP_JUDGE_MODEL", model)) if not value]
        if missing:
            raise ValueError(f"the judge needs the environment variables {', '.join(missing)}; e.g. "
                             "VIDINTERP_JUDGE_URL=http://localhost:11434/v1 VIDINTERP_JUDGE_MODEL=qwen2.5vl:7b")
        api_key = environ.get("VIDINTERP_JUDGE_API_KEY") or environ.get("OPENAI_API_KEY") or None
        return cls(base_url, model, api_key=api_key, **options)

    def request_body(self, prompt: str, images: Sequence[bytes]) -> dict:
        """The JSON body of one chat-completions request: the prompt, then each image as a PNG
        data URL."""
        content: list[dict] = [{"type": "text", "text": prompt}]
        for image in images:
            url = "data:image/png;base64," + base64.b64encode(image).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
        body: dict = {"model": self.model, "messages": [{"role": "user", "content": content}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return body

    def ask(self, prompt: str, images: Sequence[bytes]) -> str:
        """Send one chat-completions request (retrying transient failures); return the reply text.

        Raises:
            JudgeError: a non-retryable HTTP status, retries exhausted, or a response that is not
                a chat completion; the message names the URL, the status and a body excerpt.
        """
        data = json.dumps(self.request_body(prompt, images)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        failure, wait = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(wait)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._reply_text(response.read().decode("utf-8", errors="replace"))
            except urllib.error.HTTPError as error:
                body = error.read().decode("utf-8", errors="replace")
                failure = f"HTTP {error.code}: {_excerpt(body)}"
                if error.code != 429 and error.code < 500:
                    raise JudgeError(f"judge at {self.url} refused the request with {failure}") from error
                retry_after = _retry_after(error.headers.get("Retry-After") if error.headers else None)
                wait = retry_after if retry_after is not None else self.backoff(attempt + 1)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                failure = f"connection failed: {getattr(error, 'reason', error)}"
                wait = self.backoff(attempt + 1)
        raise JudgeError(f"judge at {self.url} failed {self.retries + 1} times; last: {failure}")

    def _reply_text(self, body: str) -> str:
        """``choices[0].message.content`` of a chat-completions response body."""
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise JudgeError(f"judge at {self.url} did not return a chat completion "
                             f"(choices[0].message.content): {_excerpt(body)}") from error
        if isinstance(content, list):  # some servers return content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise JudgeError(f"judge at {self.url} returned no text content: {_excerpt(body)}")
        return content


def parse_scores(reply: str, keys: Sequence[str], low: int = 1, high: int = 5) -> dict[str, int]:
    """The integer scores of ``keys`` in a reply holding a JSON object.

    The object may stand alone, sit in a code fence, or be surrounded by text; the first JSON
    object that has every key is used. Integral floats (``4.0``) and numeric strings (``"4"``)
    are accepted.

    Raises:
        JudgeReplyError: no such object, or a score that is not an integer in ``[low, high]``;
            the message includes the reply.
    """
    decoder = json.JSONDecoder()
    found = None
    for start in (match.start() for match in re.finditer(r"\{", reply)):
        try:
            candidate, _ = decoder.raw_decode(reply, start)
        except ValueError:
            continue
        if isinstance(candidate, dict) and all(key in candidate for key in keys):
            found = candidate
            break
    if found is None:
        raise JudgeReplyError(f"reply has no JSON object with the keys {list(keys)}: {reply!r}")
    scores = {}
    for key in keys:
        value = found[key]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not number.is_integer() or not low <= number <= high:
            raise JudgeReplyError(f"score {key!r} must be an integer in [{low}, {high}]; got {value!r} in reply {reply!r}")
        scores[key] = int(number)
    return scores


def ask_scores(judge: Judge, prompt: str, images: Sequence[bytes], keys: Sequence[str], *, attempts: int = 3,
               low: int = 1, high: int = 5) -> tuple[dict[str, int], list[str]]:
    """Ask ``judge`` and parse its reply with :func:`parse_scores`, asking again (up to
    ``attempts`` requests in all) while the reply cannot be parsed.

    Returns:
        ``(scores, replies)``: the parsed scores and every raw reply received, the parsed one last.

    Raises:
        JudgeReplyError: no reply parsed; the message includes the last raw reply.
        JudgeError: from the judge (transport failures are retried by the judge itself).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1; got {attempts}")
    replies: list[str] = []
    for _ in range(attempts):
        replies.append(judge.ask(prompt, images))
        try:
            return parse_scores(replies[-1], keys, low, high), replies
        except JudgeReplyError as error:
            failure = error
    raise JudgeReplyError(f"no parseable reply in {attempts} requests; last: {failure}")
