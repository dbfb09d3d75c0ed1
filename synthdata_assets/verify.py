"""Answer verifier: pull the final answer out of a completion and grade it against a gold answer.

Formats (``FORMATS``)
---------------------
``embedded``
    Our synthetic modular-arithmetic task. Solutions end with a line ``The answer is 22.``;
    the answer is the integer of the LAST ``The answer is <int>`` match (case-insensitive).
    No such line -> ``extracted=None``, graded wrong. Compared as integers.
``gsm8k``
    The answer is the number after the last ``####``; model outputs that do not use ``####``
    fall back, in this order, to the last ``The answer is X``, the last ``\\boxed{X}``, and
    finally the last number anywhere in the text. Numbers may carry ``$``, thousands commas,
    a trailing ``.``, ``%`` or unit words; the extracted text is the cleaned number
    (``"$1,000."`` -> ``"1000"``). Compared as exact rationals (``18.00 == 18``).
``math``
    The answer is the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` with balanced
    (nested) braces; without one, math_verify's own extraction is used. Equivalence goes
    through ``math_verify.parse`` + ``math_verify.verify`` (``\\frac{1}{2} == 0.5 == 1/2``,
    tuples, intervals, ``\\dfrac``, ``^\\circ``, ``\\text{...}``, ``x+1 == 1+x``, ...), after
    two cheap exact paths: identical normalized LaTeX, and plain rationals compared with
    ``fractions.Fraction``.
``star_graph``
    The didactic path-star task (``tasks/star_graph.py``): a solution is a path, one node per
    line. The extracted answer is every non-blank line, which must all be integers, joined by
    commas (``"3\n9\n30\n"`` -> ``"3,9,30"``); anything else is ``None``. Right only when
    the node lists are equal: one node too many or too few is wrong. A gold answer may list
    several true paths separated by ``|`` (``"3,30|5,30"``: graphs with several arms to the
    goal); a path equal to any of them is right.

API
---
``extract_answer(completion, fmt)``, ``answers_match(predicted, gold, fmt)``,
``grade(completion, gold, fmt) -> Grade``, ``grade_many(completions, golds, fmt)``,
``infer_format(completion, gold)`` and ``gold_from_reference(reference_solution, fmt)``.

Model output is never trusted: any input (empty, 1 MB, binary-ish, unbalanced braces,
``9^{9^{9^{9^9}}}``, ``1/0``, ``None``, ...) yields a ``Grade``, possibly wrong. Only
programming/config errors raise: an unknown ``fmt`` (``ValueError``), mismatched batch
lengths (``ValueError``), a reference solution without a gold answer (``ValueError``), and an
environment where the math_verify helper process cannot start at all (``RuntimeError``).

Time bound and thread safety
----------------------------
``embedded`` and ``gsm8k`` are pure regex + ``Fraction`` work on at most the last
``MAX_SEARCH_CHARS`` characters: microseconds to milliseconds, no third-party code.

``math`` answers that are not settled by the exact paths go to math_verify, which can take
unbounded time in sympy (huge powers, factorials, simplification). math_verify's own timeout
uses ``signal.alarm``: it works only in the main thread (``ValueError`` elsewhere) and it
would also replace the host's SIGALRM handler and cancel any alarm the host has set. So
math_verify never runs in the calling process, whatever the thread, which also makes grades
identical in every thread by construction. It runs in a small pool of helper processes
(at most ``min(4, cpu_count)``, started lazily, each the interpreter running this file, which
speaks JSON lines over pipes). Inside a helper, math_verify's signal timeouts work (it is the
helper's main thread) and keep the common slow case cheap; the caller additionally waits at
most the answer's remaining budget for the reply and, past it, kills the helper (a new one
replaces it), which also bounds work that ignores signals. Every answer has a budget of
``ANSWER_TIMEOUT_S`` (5 s) of helper time, shared by the extraction fallback and the
comparison, so grading one answer takes at most about 5 s in ANY thread, plus, only when no
helper is idle, the wait for one to start (~1 s, once per helper) or to be freed by another
thread. In practice pathological answers (``9^{9^{9^{9^9}}}``, ``100000000!``) end at
math_verify's 2 s soft timeout. Extracted answers longer than ``MAX_ANSWER_CHARS`` are
compared as normalized strings only, and helpers run under a 4 GiB address-space limit.
Importing this module loads only the standard library; sympy lives in the helpers.

Running this file as a script (``python -P verify.py``) starts the helper loop; this module
does it for you.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction

FORMATS = ("embedded", "gsm8k", "math", "star_graph")
# Formats whose answer is the whole solution, not a line of it: a star_graph path is written one
# node per step, so a continuation from a solution's first steps is graded with those steps in
# front of it (synthdata_assets/rollouts.py, "Grading").
WHOLE_SOLUTION_FORMATS = frozenset({"star_graph"})

ANSWER_TIMEOUT_S = 5.0
"""Helper (math_verify) time one answer may use; past it the answer is graded wrong."""
WORKER_START_TIMEOUT_S = 60.0
"""Longest wait for a fresh helper to import math_verify before giving up (RuntimeError)."""
MAX_SEARCH_CHARS = 20_000
"""Only this many trailing characters of a completion are searched for the answer."""
MAX_ANSWER_CHARS = 500
"""Longer answers (or golds) are compared as normalized strings only."""

# math_verify's regex extraction is super-linear on some inputs (e.g. many "\[" in a row).
_FALLBACK_EXTRACT_CHARS = 3_000
# Fraction(str) goes through int(), which refuses > 4300 digits; real answers are far shorter.
_MAX_NUMBER_CHARS = 100
_MAX_EXPONENT = 1000
_EXPONENT = re.compile(r"[eE]([+-]?\d+)$")
# Whole seconds because math_verify feeds it to signal.alarm; below ANSWER_TIMEOUT_S so that a
# slow sympy call normally ends with a clean "not equal" instead of a helper kill.
_SOFT_TIMEOUT_S = 2
_POOL_SIZE = max(1, min(4, os.cpu_count() or 1))
_WORKER_MEMORY_LIMIT = 4 << 30

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grade:
    """Result of grading one completion."""

    extracted: str | None
    """The extracted final answer as text (None when nothing could be extracted)."""
    is_correct: bool


# --------------------------------------------------------------------------- helpers: text


def _check_format(fmt: object) -> str:
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {FORMATS}")
    return fmt


def _as_text(value: object) -> str | None:
    """str as-is, int as its decimal text (golds of the synthetic task are ints), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than int->str conversion allows
            return None
    return None


_NUMBER_TOKEN = re.compile(
    r"(?<![\d.])(?P<neg>(?<![\w)\]])[-−])?(?:\\?\$\s?)?(?P<neg2>-)?"
    r"(?P<num>(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+(?![\d.]))?)"
)
_DIGIT = re.compile(r"\d")
_INTEGER = re.compile(r"\s*-?\d+\s*")


def _clean_number(match: re.Match[str]) -> str:
    num = match["num"].replace(",", "")
    if num.startswith("."):
        num = "0" + num
    return ("-" if match["neg"] or match["neg2"] else "") + num


def _fraction(text: str) -> Fraction | None:
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    exponent = _EXPONENT.search(text)
    if exponent and abs(int(exponent[1])) > _MAX_EXPONENT:
        return None  # 1e99999999 would build a hundred-million-digit integer
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    """Exact equality; when either side was written as a decimal, equality to 6 places.

    The 6-place rule mirrors math_verify (float_rounding=6), so that 0.333333 == 1/3 holds
    on the fast path exactly when it would hold in math_verify.
    """
    (x, x_decimal), (y, y_decimal) = a, b
    if x == y:
        return True
    return (x_decimal or y_decimal) and round(x, 6) == round(y, 6)


# Plain rationals after _normalize_latex: 12, -0.5, .5, 3/4, \frac{3}{4}, \frac34, -\frac{1}{2}.
_RATIONAL = re.compile(
    r"(?P<neg>-)?(?:(?P<dec>(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?)|(?P<n1>\d+)/(?P<d1>\d+)"
    r"|\\frac\{(?P<n2>-?\d+)\}\{(?P<d2>-?\d+)\}|\\frac(?P<n3>\d)(?P<d3>\d))"
)


def _rational(text: str) -> tuple[Fraction, bool] | None:
    """(value, written_as_decimal) for a plain rational, else None."""
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    m = _RATIONAL.fullmatch(text)
    if m is None:
        return None
    if m["dec"] is not None:
        value, is_decimal = _fraction(m["dec"]), "." in m["dec"] or "e" in m["dec"].lower()
    else:
        num, den = m["n1"] or m["n2"] or m["n3"], m["d1"] or m["d2"] or m["d3"]
        value, is_decimal = _fraction(f"{num}/{den}"), False
    if value is None:
        return None
    return (-value if m["neg"] else value), is_decimal


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_LATEX_SPACING = re.compile(r"\\[,;:! ]|~|\s+")


def _normalize_latex(text: str) -> str:
    """Cheap canonical form of a LaTeX answer; equal forms are certainly equivalent."""
    text = _TEXT_WRAPPER.sub(r"\1", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _LEFT_RIGHT.sub("", text)
    text = _DEGREES.sub("", text)
    text = _LATEX_SPACING.sub("", text).replace("{,}", ",")
    return text.strip("$").rstrip(".")


# --------------------------------------------------------------------------- extraction

_EMBEDDED = re.compile(r"the\s+answer\s+is\s*:?\s*\$?\s*(-?\d+)(?![.,]?\d)", re.IGNORECASE)
_HASHES = re.compile(r"####([^\n]*)")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is\b([^\n]*)", re.IGNORECASE)
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# An escaped pair ("\{", "\}", "\\") is consumed whole so that it never counts as a brace.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} with balanced braces, else None.

    One linear pass pairs up all braces, so many unclosed "\\boxed{" cannot make this
    quadratic. An unclosed or empty last box falls back to the one before it.
    """
    opens = [m.end() - 1 for m in _BOX_OPEN.finditer(text)]
    if not opens:
        return None
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN.finditer(text, opens[0]):
        if m.group() == "{":
            stack.append(m.start())
        elif m.group() == "}" and stack:
            closing[stack.pop()] = m.start()
    for start in reversed(opens):
        end = closing.get(start)
        if end is not None and text[start + 1 : end].strip():
            return text[start + 1 : end].strip()
    return None


def _balanced(text: str) -> bool:
    depth = 0
    for m in _BRACE_TOKEN.finditer(text):
        depth += 1 if m.group() == "{" else -1 if m.group() == "}" else 0
        if depth < 0:
            return False
    return depth == 0


def _first_number(text: str) -> str | None:
    m = _NUMBER_TOKEN.search(text)
    return _clean_number(m) if m else None


def _last_number(text: str) -> str | None:
    last = None
    for match in _NUMBER_TOKEN.finditer(text):
        last = match
    return _clean_number(last) if last else None


def _after_hashes(text: str) -> str | None:
    for m in reversed(list(_HASHES.finditer(text))):
        number = _first_number(m.group(1))
        if number is not None:
            return number
    return None


def _extract_embedded(text: str) -> str | None:
    matches = _EMBEDDED.findall(text)
    return matches[-1] if matches else None


def _extract_star_graph(text: str) -> str | None:
    nodes = [line.strip() for line in text.split("\n") if line.strip()]
    if not nodes or not all(_INTEGER.fullmatch(n) for n in nodes):
        return None
    return ",".join(str(int(n)) for n in nodes)


def _star_graph_equal(predicted: str, gold: str) -> bool:
    def nodes(text: str) -> list[int] | None:
        parts = [p.strip() for p in text.split(",")]
        return [int(p) for p in parts] if all(_INTEGER.fullmatch(p) for p in parts) else None

    p = nodes(predicted)
    return p is not None and any(p == nodes(g) for g in gold.split("|"))


def _extract_gsm8k(text: str) -> str | None:
    number = _after_hashes(text)
    if number is None:
        for m in reversed(list(_ANSWER_IS.finditer(text))):
            number = _first_number(m.group(1))
            if number is not None:
                break
    if number is None:
        boxed = _last_boxed(text)
        number = _first_number(boxed) if boxed is not None else None
    return number if number is not None else _last_number(text)


def _extract_math(text: str, budget: _Budget) -> str | None:
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    found = _call_worker("extract", [text[-_FALLBACK_EXTRACT_CHARS:]], budget)
    return found if isinstance(found, str) and found.strip() else None


def _extract(completion: object, fmt: str, budget: _Budget) -> str | None:
    text = _as_text(completion)
    if text is None:
        return None
    text = text[-MAX_SEARCH_CHARS:]
    if fmt == "embedded":
        return _extract_embedded(text)
    if fmt == "gsm8k":
        return _extract_gsm8k(text)
    if fmt == "star_graph":
        return _extract_star_graph(text)
    return _extract_math(text, budget)


# --------------------------------------------------------------------------- comparison


def _gsm8k_value(text: str) -> tuple[Fraction, bool] | None:
    """A single number with optional $, commas, %, units ("18 dollars"), or a plain fraction."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    tokens = list(_NUMBER_TOKEN.finditer(text))
    if len(tokens) == 1:
        m = tokens[0]
        if not _DIGIT.search(text[: m.start()] + text[m.end() :]):
            value = _fraction(_clean_number(m))
            return (value, "." in m["num"]) if value is not None else None
    return _rational(_normalize_latex(text))


def _embedded_equal(predicted: str, gold: str) -> bool:
    p, g = predicted.strip().rstrip("."), gold.strip().rstrip(".")
    p_value = _fraction(p) if _INTEGER.fullmatch(p) else None
    g_value = _fraction(g) if _INTEGER.fullmatch(g) else None
    if p_value is not None and g_value is not None:
        return p_value == g_value
    return bool(p) and p == g


def _gsm8k_equal(predicted: str, gold: str) -> bool:
    p, g = _gsm8k_value(predicted), _gsm8k_value(gold)
    if p is not None and g is not None:
        return _numbers_equal(p, g)
    p_text, g_text = predicted.strip().rstrip(".").lower(), gold.strip().rstrip(".").lower()
    return bool(p_text) and p_text == g_text


def _math_equal(predicted: str, gold: str, budget: _Budget) -> bool:
    p, g = _normalize_latex(predicted), _normalize_latex(gold)
    if not p:
        return False
    if p == g:
        return True
    p_value, g_value = _rational(p), _rational(g)
    if p_value is not None and g_value is not None:
        return _numbers_equal(p_value, g_value)
    if len(predicted) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    # The helper wraps answers in \boxed{...}; a stray "}" would let it box something else.
    if not (_balanced(predicted) and _balanced(gold)):
        return False
    return _call_worker("equal", [predicted, gold], budget) is True


def _match(predicted: object, gold: object, fmt: str, budget: _Budget) -> bool:
    p, g = _as_text(predicted), _as_text(gold)
    if p is None or g is None:
        return False
    if fmt == "embedded":
        return _embedded_equal(p, g)
    if fmt == "gsm8k":
        return _gsm8k_equal(p, g)
    if fmt == "star_graph":
        return _star_graph_equal(p, g)
    return _math_equal(p, g, budget)


# --------------------------------------------------------------------------- public API


def extract_answer(completion: str, fmt: str) -> str | None:
    """The final answer of ``completion`` as text, or None when none can be found."""
    return _extract(completion, _check_format(fmt), _Budget())


def answers_match(predicted: str | None, gold: str, fmt: str) -> bool:
    """Whether an extracted answer is equivalent to the gold answer (None -> False)."""
    return _match(predicted, gold, _check_format(fmt), _Budget())


def grade(completion: str, gold: str, fmt: str) -> Grade:
    """Extract the answer of ``completion`` and compare it with ``gold``."""
    fmt = _check_format(fmt)
    budget = _Budget()
    extracted = _extract(completion, fmt, budget)
    return Grade(extracted, extracted is not None and _match(extracted, gold, fmt, budget))


def grade_many(
    completions: Sequence[str], golds: Sequence[str], fmt: str | Sequence[str]
) -> list[Grade]:
    """``grade`` for each row; ``fmt`` is one format for all rows or one per row.

    Batches with math rows are graded by up to ``min(4, cpu_count)`` threads, one per helper
    process, since those rows spend their time waiting on helpers; the result is the same as
    grading row by row.
    """
    formats = [fmt] * len(completions) if isinstance(fmt, str) else list(fmt)
    if not len(completions) == len(golds) == len(formats):
        raise ValueError(
            f"grade_many needs equally long inputs: {len(completions)} completions, "
            f"{len(golds)} golds, {len(formats)} formats"
        )
    for f in formats:
        _check_format(f)
    if _POOL_SIZE > 1 and len(formats) > 1 and "math" in formats:
        with ThreadPoolExecutor(max_workers=_POOL_SIZE) as pool:
            return list(pool.map(grade, completions, golds, formats))
    return [grade(c, g, f) for c, g, f in zip(completions, golds, formats, strict=True)]


_LATEX_HINT = re.compile(r"\\[A-Za-z]|[\^_{}]")


def infer_format(completion: str, gold: str) -> str:
    """Guess the answer format of a row that has none. First rule that applies wins:

    1. ``####`` in the completion or the gold -> ``gsm8k``;
    2. ``\\boxed``/``\\fbox`` in the completion, or LaTeX in the gold (a backslash command,
       ``^``, ``_``, ``{`` or ``}``) -> ``math``;
    3. ``The answer is <int>`` in the completion and an integer gold -> ``embedded``;
    4. a gold that is a plain number (``$``, commas, ``%`` allowed) -> ``gsm8k``;
    5. otherwise -> ``math``.
    """
    c, g = _as_text(completion) or "", _as_text(gold) or ""
    c_tail = c[-MAX_SEARCH_CHARS:]
    if "####" in c_tail or "####" in g:
        return "gsm8k"
    if _BOX_OPEN.search(c_tail) or _LATEX_HINT.search(g[:MAX_ANSWER_CHARS]):
        return "math"
    if _EMBEDDED.search(c_tail) and _INTEGER.fullmatch(g):
        return "embedded"
    if _gsm8k_value(g) is not None:
        return "gsm8k"
    return "math"


def gold_from_reference(reference_solution: str, fmt: str) -> str:
    """The gold answer stated in a reference solution, in the form ``extract_answer`` gives.

    Strict, because references are data rather than model output: gsm8k needs a ``####``
    line with a number, math a balanced ``\\boxed{}``/``\\fbox{}``, embedded a
    ``The answer is <int>`` line; otherwise ``ValueError``. No tail cut and no fallbacks.
    """
    fmt = _check_format(fmt)
    text = _as_text(reference_solution)
    if text is None:
        raise ValueError(f"reference solution must be a str, got {type(reference_solution)}")
    if fmt == "embedded":
        gold, wanted = _extract_embedded(text), "a 'The answer is <int>' line"
    elif fmt == "gsm8k":
        gold, wanted = _after_hashes(text), "a '#### <number>' line"
    else:
        gold, wanted = _last_boxed(text), "a balanced \\boxed{...}"
    if gold is None:
        raise ValueError(f"reference solution has no {wanted}: {text[-200:]!r}")
    return gold


# --------------------------------------------------------------------------- helper processes


class _Budget:
    """Helper time left to one answer; shared by its extraction and its comparison."""

    def __init__(self) -> None:
        self.seconds = ANSWER_TIMEOUT_S


class _WorkerGone(Exception):
    """The helper missed its deadline or died; it must not be reused."""


class _Worker:
    def __init__(self) -> None:
        # -P keeps this file's folder (the package) off sys.path so that no sibling module can
        # shadow a standard one; running the file rather than importing the package keeps the
        # package __init__ (and whatever it imports) out of the helper.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.pid_owner = os.getpid()
        self._buffer = b""
        self.ready = False

    def _read_reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise _WorkerGone("no reply in time")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _WorkerGone("helper exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as exc:
            raise _WorkerGone(f"unreadable reply {line[:80]!r}") from exc

    def start(self) -> None:
        try:
            hello = self._read_reply(WORKER_START_TIMEOUT_S)
        except _WorkerGone as exc:
            self.kill()
            raise RuntimeError(f"math_verify helper failed to start: {exc}") from exc
        if not hello.get("ready"):
            self.kill()
            raise RuntimeError(f"math_verify helper failed to start: {hello.get('error')}")
        self.ready = True

    def call(self, op: str, args: list, timeout: float) -> object:
        try:
            self.proc.stdin.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise _WorkerGone(f"helper pipe closed: {exc}") from exc
        return self._read_reply(timeout).get("result")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        # Closing flushes any unsent request into a pipe nobody reads any more.
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.stdout.close()


_pool_lock = threading.Lock()
_idle: list[_Worker] = []
_slots = threading.BoundedSemaphore(_POOL_SIZE)


def _call_worker(op: str, args: list, budget: _Budget) -> object:
    """Run ``op`` in a helper within the budget; None when it ran out or the helper died."""
    if budget.seconds <= 0:
        return None
    with _slots:
        with _pool_lock:
            worker = _idle.pop() if _idle else None
        if worker is None or worker.proc.poll() is not None:
            try:
                worker = _Worker()
            except OSError as exc:
                raise RuntimeError(f"cannot start the math_verify helper: {exc}") from exc
        if not worker.ready:
            worker.start()
        started = time.monotonic()
        try:
            result = worker.call(op, args, budget.seconds)
        except _WorkerGone as exc:
            logger.debug("math_verify helper killed (%s) on %s %.80r", exc, op, args)
            worker.kill()
            return None
        finally:
            budget.seconds -= time.monotonic() - started
        with _pool_lock:
            _idle.append(worker)
        return result


def _forget_workers_after_fork() -> None:
    # The helpers belong to the parent; a forked child sharing their pipes would interleave
    # requests, and its open copies would keep a helper from seeing EOF when the parent exits.
    # The child starts its own helpers when it needs them.
    global _pool_lock, _slots
    _pool_lock = threading.Lock()
    _slots = threading.BoundedSemaphore(_POOL_SIZE)
    for worker in _idle:
        worker.proc.stdin.close()
        worker.proc.stdout.close()
        worker.proc.returncode = 0  # not this process's child: never wait for or warn about it
    _idle.clear()


def _close_workers() -> None:
    with _pool_lock:
        workers = [w for w in _idle if w.pid_owner == os.getpid()]
        _idle.clear()
    for worker in workers:
        worker.kill()


os.register_at_fork(after_in_child=_forget_workers_after_fork)
atexit.register(_close_workers)


# --------------------------------------------------------------------------- helper side


def _worker_main() -> None:  # pragma: no cover - runs in the helper process
    """Helper loop: one JSON request per stdin line, one JSON reply per line."""
    replies = os.fdopen(os.dup(1), "w", encoding="ascii")
    # Libraries that print would corrupt the protocol; their output goes to stderr instead.
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    try:
        import resource

        # A runaway sympy computation should fail with MemoryError, not exhaust the machine.
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft > _WORKER_MEMORY_LIMIT:
            resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_LIMIT, hard))
        from functools import lru_cache

        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        from math_verify.errors import TimeoutException
    except Exception as exc:  # report any import/setup failure to the parent, then stop
        reply({"ready": False, "error": repr(exc)})
        return
    # math_verify logs whole inputs at WARNING on every timeout; nobody reads them here.
    logging.disable(logging.CRITICAL)

    @lru_cache(maxsize=2048)
    def parse_answer(answer: str) -> tuple:
        config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        wrapped = "\\boxed{" + answer + "}"
        return tuple(parse(wrapped, extraction_config=config, parsing_timeout=_SOFT_TIMEOUT_S))

    def equal(predicted: str, gold: str) -> bool:
        gold_parsed, pred_parsed = list(parse_answer(gold)), list(parse_answer(predicted))
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_SOFT_TIMEOUT_S))

    def extract(text: str) -> str | None:
        found = parse(text, fallback_mode="first_match", parsing_timeout=_SOFT_TIMEOUT_S)
        texts = [f for f in found if isinstance(f, str)]
        if texts:
            return texts[0]
        return str(found[0])[:MAX_ANSWER_CHARS] if found else None

    ops = {"equal": equal, "extract": extract}
    reply({"ready": True})
    for line in sys.stdin:
        # Deliberately broad: sympy/latex2sympy raise arbitrary exceptions on garbage, and
        # TimeoutException derives from BaseException; any failure means "no answer".
        try:
            request = json.loads(line)
            result = ops[request["op"]](*request["args"])
        except (Exception, TimeoutException):
            result = None
        reply({"result": result})


if __name__ == "__main__":
    _worker_main()
