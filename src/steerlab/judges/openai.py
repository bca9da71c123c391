"""LLM judge over any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, llama.cpp).

Each prompt is one request (temperature 0, 1-3 tokens, top-20 logprobs); the score is the
logprob-weighted number of `steerlab.judges.logprobs`. Requests run concurrently under a
semaphore and retry 429/5xx/timeouts/connection errors with exponential backoff and jitter.
The API key is read from the environment at request time and never stored on the judge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from steerlab.errors import InfraError
from steerlab.judges.llm import LLMJudge, Prompts, Reading, low_mass_note
from steerlab.judges.logprobs import TopLogprobs, expected_score

MAX_RETRY_AFTER = 60.0  # seconds; a server asking for longer is treated as down
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the run


class JudgeEndpointError(InfraError):
    """The judge endpoint gave no usable answer (down, wrong URL, bad key): the run stops."""


class _Breaker:
    """Stops a batch once `limit` attempts in a row failed (timeouts, connection errors, 5xx).

    An endpoint that is down, or accepts connections and never answers, then fails after about
    ceil(limit / concurrency) x timeout (60 s with the defaults: 16 concurrent requests time
    out together), whatever the number of prompts; a success anywhere resets the count.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.in_a_row = limit, 0

    def failed(self, url: str, why: str) -> None:
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise JudgeEndpointError(
                f"judge endpoint {url} is not answering: {self.in_a_row} attempts in a row "
                f"failed, the last: {why}"
            )

    def ok(self) -> None:
        self.in_a_row = 0


class OpenAIJudge(LLMJudge):
    backend = "openai"

    def __init__(
        self,
        prompts: Prompts,
        model: str = "gpt-4.1-mini",
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 60.0,
        min_mass: float = 0.25,
        max_tokens: int = 3,
        top_logprobs: int = 20,
        breaker: int = 8,
        deadline: float = 1800.0,
    ) -> None:
        super().__init__(prompts, min_mass, max_tokens)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        self.top_logprobs = int(top_logprobs)
        self.breaker = max(1, int(breaker))
        self.deadline = float(deadline)

    def _where(self) -> str:
        return f"{self._redact(self.base_url)}:{self.model}:top{self.top_logprobs}"

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "").strip()

    def _redact(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def read(self, texts: Sequence[str]) -> list[Reading]:
        if not texts:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._read_all(texts))
        with ThreadPoolExecutor(1) as pool:  # called from inside an event loop (e.g. notebooks)
            return pool.submit(asyncio.run, self._read_all(texts)).result()

    async def _read_all(self, texts: Sequence[str]) -> list[Reading]:
        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.concurrency)
        sem = asyncio.Semaphore(self.concurrency)
        breaker = _Breaker(self.breaker)
        async with httpx.AsyncClient(timeout=self.timeout, headers=headers, limits=limits) as c:
            tasks = [asyncio.create_task(self._request(c, sem, breaker, t)) for t in texts]
            try:
                results = await asyncio.wait_for(asyncio.gather(*tasks), self.deadline)
            except TimeoutError:
                raise JudgeEndpointError(
                    f"judge endpoint {self.url} did not score {len(texts)} prompts within "
                    f"judge.deadline={self.deadline:g} s"
                ) from None
            finally:
                for t in tasks:
                    t.cancel()
        if all(r.failed for r in results):
            raise JudgeEndpointError(
                f"all {len(results)} judge requests failed: {results[-1].note}"
            )
        return results

    async def _request(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, breaker: _Breaker, text: str
    ) -> Reading:
        """One prompt with retries; returns a failed Reading (never raises) after the last try."""
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        last, wait_hint = "", 0.0
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                await asyncio.sleep(max(delay, wait_hint))
            wait_hint = 0.0
            try:
                async with sem:
                    resp = await client.post(self.url, json=payload)
            except httpx.TimeoutException as e:
                last = f"timeout after {self.timeout:g}s ({type(e).__name__})"
                breaker.failed(self.url, last)
                continue
            except httpx.TransportError as e:
                last = self._redact(f"connection error ({type(e).__name__}: {e})")
                breaker.failed(self.url, last)
                continue
            if resp.status_code == 429:  # alive but busy: wait as asked, not a breaker failure
                last = "HTTP 429"
                wait_hint = _retry_after(resp)
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                wait_hint = _retry_after(resp)
                breaker.failed(self.url, last)
                continue
            breaker.ok()
            if resp.status_code != 200:  # other 4xx: retrying cannot help
                hint = f" (is ${self.api_key_env} set?)" if resp.status_code in (401, 403) else ""
                body = "" if hint else f": {self._redact(resp.text)[:200]}"  # redact, then cut
                return Reading(
                    None,
                    note=self._redact(
                        f"judge endpoint {self.url} answered HTTP {resp.status_code}{hint}{body}"
                    ),
                    failed=True,
                )
            return self._parse(resp.content)
        return Reading(
            None,
            note=self._redact(
                f"judge endpoint {self.url} failed after {attempts} attempts; last: {last}"
            ),
            failed=True,
        )

    def _parse(self, content: bytes) -> Reading:
        """A 200 response -> Reading; a payload without usable logprobs gets a note, no score."""
        try:
            positions, chosen = parse_logprobs(json.loads(content))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            return Reading(None, note=f"unusable response ({type(e).__name__}: {str(e)[:120]})")
        score, mass = expected_score(positions, self.min_mass, chosen)
        return Reading(score, mass, "" if score is not None else low_mass_note(mass))


def _retry_after(resp: httpx.Response) -> float:
    try:
        return min(float(resp.headers.get("retry-after", 0)), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


def parse_logprobs(data: Any) -> tuple[TopLogprobs, list[str]]:
    """(top logprobs per position, chosen tokens) from a chat-completions response.

    Reads the OpenAI chat format (`logprobs.content[].top_logprobs`) and the legacy completions
    format (`logprobs.tokens` + `logprobs.top_logprobs` as token->logprob dicts) that some
    OpenAI-compatible servers return.
    """
    lp = data["choices"][0]["logprobs"]
    if not isinstance(lp, dict):
        raise ValueError("no logprobs in response (does the server support logprobs?)")
    positions: list[list[tuple[str, float]]] = []
    chosen: list[str] = []
    if lp.get("content"):
        for item in lp["content"]:
            tops = item.get("top_logprobs") or [item]
            positions.append([(str(t["token"]), float(t["logprob"])) for t in tops])
            chosen.append(str(item["token"]))
    elif lp.get("top_logprobs"):
        for tok, tops in zip(lp["tokens"], lp["top_logprobs"], strict=True):
            positions.append([(str(t), float(v)) for t, v in tops.items()])
            chosen.append(str(tok))
    else:
        raise ValueError("empty logprobs in response")
    return positions, chosen
