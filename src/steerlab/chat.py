"""Structured chat over any OpenAI-compatible `/chat/completions` endpoint (trait authoring).

The same endpoint settings as `judge=openai` (base URL, model, key from the environment,
retries, breaker, deadline). Answers are asked as JSON under a schema: the server's
`json_schema` response format where it has one, else `json_object` with the schema (llama.cpp,
vLLM), else plain text; whatever comes back is parsed strictly and checked against the schema,
and a failed parse is asked again (bounded) with the reason.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from steerlab.judges.openai import JudgeEndpointError, _Breaker, _retry_after

MODES = ("json_schema", "json_object", "text")  # response formats, tried in this order


class ChatAnswerError(ValueError):
    """The endpoint answered, but never with JSON that fits the schema."""


@dataclass
class ChatEndpoint:
    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    breaker: int = 8
    deadline: float = 1800.0
    max_tokens: int = 2048
    temperature: float = 1.0
    parse_retries: int = 3
    mode: str = MODES[0]
    requests: int = 0  # made so far, for the provenance record
    _breaker: _Breaker = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self._breaker = _Breaker(max(1, int(self.breaker)))

    @classmethod
    def from_judge(cls, judge: Mapping[str, Any], **kw: Any) -> ChatEndpoint:
        """The endpoint of a `judge=openai` config mapping."""
        keys = ("model", "base_url", "api_key_env", "max_retries", "backoff", "timeout")
        own = {
            k: judge[k] for k in (*keys, "breaker", "deadline") if judge.get(k) not in (None, "")
        }
        return cls(**(own | kw))

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        return text.replace(key, "***") if key else text

    def ask(self, prompt: str, schema: dict[str, Any], seed: int) -> dict[str, Any]:
        """The answer to `prompt` as a JSON object that fits `schema` (see `fits`)."""
        started = time.monotonic()
        messages = [{"role": "user", "content": prompt}]
        why = ""
        for attempt in range(self.parse_retries + 1):
            if why:  # say what was wrong, once, and ask again
                messages = [
                    messages[0],
                    {
                        "role": "user",
                        "content": f"Your last reply was not usable: {why}. Reply with JSON only.",
                    },
                ]
            text = self._complete(messages, schema, seed + 1000 * attempt, started)
            try:
                return fits(parse_json(text), schema)
            except ValueError as e:
                why = str(e)[:200]
        raise ChatAnswerError(
            f"{self.url}: no answer fitting the schema after {self.parse_retries + 1} tries; "
            f"the last: {why}"
        )

    def _complete(
        self, messages: list[dict[str, str]], schema: dict[str, Any], seed: int, started: float
    ) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        last = ""
        for attempt in range(self.max_retries + 1):
            if time.monotonic() - started > self.deadline:
                raise JudgeEndpointError(
                    f"chat endpoint {self.url} gave no answer within judge.deadline="
                    f"{self.deadline:g} s; the last: {last}"
                )
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            payload = self._payload(messages, schema, seed)
            self.requests += 1
            try:
                resp = httpx.post(self.url, json=payload, headers=headers, timeout=self.timeout)
            except httpx.TransportError as e:
                last = self.redact(f"{type(e).__name__}: {e}")
                self._breaker.failed(self.url, last)
                continue
            if self._unsupported(resp):  # this server lacks the response format: the next one
                self.mode = MODES[MODES.index(self.mode) + 1]
                return self._complete(messages, schema, seed, started)
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                if resp.status_code >= 500:
                    self._breaker.failed(self.url, last)
                time.sleep(_retry_after(resp))
                continue
            self._breaker.ok()
            if resp.status_code != 200:  # a refused request: retrying cannot help
                hint = f" (is ${self.api_key_env} set?)" if resp.status_code in (401, 403) else ""
                raise JudgeEndpointError(
                    self.redact(
                        f"chat endpoint {self.url} answered HTTP {resp.status_code}{hint}: "
                        f"{resp.text[:200]}"
                    )
                )
            try:
                return str(resp.json()["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError) as e:
                return f"<unusable response: {type(e).__name__}>"
        raise JudgeEndpointError(
            f"chat endpoint {self.url} failed after {self.max_retries + 1} attempts; last: {last}"
        )

    def _payload(
        self, messages: list[dict[str, str]], schema: dict[str, Any], seed: int
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": seed,
        }
        if self.mode == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        elif self.mode == "json_object":
            payload["response_format"] = {"type": "json_object", "schema": schema}
        return payload

    def _unsupported(self, resp: httpx.Response) -> bool:
        """A 400/422 (or a 500 from a strict validator) that names `response_format`."""
        return (
            self.mode != MODES[-1]
            and resp.status_code in (400, 422, 500)
            and "response_format" in resp.text
        )


def parse_json(text: str) -> Any:
    """The one JSON value in `text`; a fenced ```json block is unwrapped, nothing else."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at char {e.pos})") from None


def fits(value: Any, schema: dict[str, Any], where: str = "$") -> Any:
    """`value` if it fits `schema` (the subset authoring uses: object with required
    properties, array with min/max items, string with minLength, integer with bounds), else a
    ValueError naming the first place that does not."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        props = schema.get("properties", {})
        missing = [k for k in schema.get("required", props) if k not in value]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        return {k: fits(value[k], s, f"{where}.{k}") for k, s in props.items() if k in value}
    if kind == "array":
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected an array")
        if len(value) < schema.get("minItems", 0):
            raise ValueError(f"{where}: {len(value)} items, need {schema['minItems']}")
        return [fits(v, schema["items"], f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string")
        return value.strip()
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"{where}: expected an integer")
        lo, hi = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
        if not lo <= value <= hi:
            raise ValueError(f"{where}: {value} outside {lo}-{hi}")
        return int(value)
    raise ValueError(f"{where}: unsupported schema type {kind!r}")
