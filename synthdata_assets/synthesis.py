"""New problems in the style of a seed set, written and solved by a served model: the paper's
synthetic problems.

Setlur et al.'s D_syn is problems *and* solutions written by a strong model (GPT-4, Gemini
1.5) in the style of GSM8K and MATH, not solutions to problems that exist already.
:func:`synthesize_pool` asks a model behind an OpenAI-compatible API (``vllm serve``, or a
hosted chat model) for such problems and returns a GSM8K-format pool; ``synthdata
synthesize`` writes it as a JSONL file that ``task.train_path`` reads like GSM8K's own
``train.jsonl`` (``task.name: gsm8k``).

Candidate ``i`` goes through four steps:

1. **Writing.** The prompt shows ``shots`` seed problems with their worked solutions, drawn by
   a random stream seeded with ``(seed, i)``, and asks for one new problem of the same kind
   with its solution. On the completions API it is few-shot text (``Question: ...`` /
   ``Answer: ...`` blocks, then ``Question:``) that a base model continues; on the chat API
   one user message with the same examples and an instruction to reply in that form.
   Generation stops at the next ``\\nQuestion:``.
2. **Parsing.** The reply must split into a question and a solution whose ``####`` line holds
   a plain number, with at least one step before it (the GSM8K loader's rule,
   :func:`synthdata_assets.tasks.realdata.gsm8k_answer`); text after that line is dropped.
   Otherwise the candidate is ``unparsable``.
3. **Deduplication.** A question equal to a seed question or to an earlier candidate's, after
   folding case and whitespace, is a ``duplicate``.
4. **Agreement.** The model solves the new question ``votes`` times (the same shots, a solve
   prompt, its own seeded samples). The most common final answer (values compared exactly,
   ``3.50`` equals ``3.5``; an answer without a ``####`` line counts as none) and its share of
   the votes are the problem's answer and ``agreement``. The problem is ``kept`` when at
   least two votes and at least ``min_agreement`` of them agree, else it is ``disagreed``.
   Its solution is the writer's own when the writer's answer is that majority answer, else
   the first vote that gave it.

A kept row holds ``question`` and ``answer`` (the solution, ``#### N`` last) as GSM8K does,
plus ``agreement``, ``votes`` (each vote's answer, or null), ``writer_answer``,
``writer_agrees``, ``candidate`` (its index ``i``) and ``teacher`` (the model); the loader
keeps these in the problem's ``meta``.

Candidates go in rounds, in index order, until ``size`` are kept or ``max_candidates`` were
tried; the pool is the first ``size`` kept candidates by index. Nothing about candidate ``i``
depends on later ones or on the rounds, so a pool of 500 is the first 500 rows of a pool of
1000 written with the same settings, like the study's nested data sizes. Two candidates
whose shots happen to be the same prompt get that prompt's samples 0 and 1, not one sample
twice. Every request goes through :class:`training.generation.openai_engine.OpenAIGenerator`
with its cache: a killed run, rerun, requests only what is missing, and a larger pool reuses
every request of a smaller one.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from synthdata_assets.tasks.realdata import RealProblem, gsm8k_answer, strip_calculator_notes
from training.generation import SamplingParams
from training.generation.openai_engine import OpenAIGenerator
from training.progress import Progress

STOP: tuple[str, ...] = ("\nQuestion:",)
OUTCOMES: tuple[str, ...] = ("kept", "unparsable", "duplicate", "disagreed")

WRITE_INSTRUCTION = (
    "Here are math word problems, each with a worked solution: one step per line, and a last "
    "line '#### ' followed by the numeric answer."
)
WRITE_REQUEST = (
    "Write one new problem of the same kind and difficulty, different from these, and its "
    "worked solution. Reply in exactly this form:\n"
    "Question: <the problem>\n"
    "Answer: <the solution, one step per line, with a last line '#### <number>'>"
)
SOLVE_REQUEST = (
    "Solve the next problem the same way: a worked solution, one step per line, with a last "
    "line '#### <number>'. Reply with the solution only."
)

Log = Callable[[str], None]
_ANSWER_LABEL = re.compile(r"\n\s*Answer:[ \t]*")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class SynthesisSettings:
    """How many problems to keep and how to write and check them (see the module docstring).

    ``temperature`` and ``max_new_tokens`` apply to writing and to solving; ``max_candidates``
    (default four per kept problem) caps the candidates tried.
    """

    size: int
    shots: int = 4
    votes: int = 4
    min_agreement: float = 0.75
    temperature: float = 0.7
    max_new_tokens: int = 512
    seed: int = 0
    max_candidates: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "size": self.size >= 1,
            "shots": self.shots >= 1,
            "votes": self.votes >= 2,
            "min_agreement": 0 < self.min_agreement <= 1,
            "temperature": self.temperature > 0,
            "max_new_tokens": self.max_new_tokens >= 1,
            "max_candidates": self.max_candidates is None or self.max_candidates >= self.size,
        }
        rules = {
            "size": ">= 1",
            "shots": ">= 1",
            "votes": ">= 2 (agreement needs several samples)",
            "min_agreement": "in (0, 1]",
            "temperature": "> 0 (greedy samples would all agree)",
            "max_new_tokens": ">= 1",
            "max_candidates": ">= size",
        }
        for name, holds in checks.items():
            if not holds:
                raise ValueError(f"{name} must be {rules[name]}, got {getattr(self, name)!r}")

    @property
    def candidate_limit(self) -> int:
        return self.max_candidates if self.max_candidates is not None else 4 * self.size


@dataclass
class SynthesisReport:
    """What a call did: the outcome of every candidate tried, in index order, and the tokens
    the model wrote for it (cached completions included)."""

    outcomes: list[str] = field(default_factory=list)
    write_tokens: int = 0
    solve_tokens: int = 0

    def counts(self) -> dict[str, int]:
        found = Counter(self.outcomes)
        return {outcome: found[outcome] for outcome in OUTCOMES}

    def summary(self) -> dict:
        return {
            "candidates": len(self.outcomes),
            **self.counts(),
            "write_tokens": self.write_tokens,
            "solve_tokens": self.solve_tokens,
        }


def synthesize_pool(
    seeds: Sequence[RealProblem],
    generator: OpenAIGenerator,
    settings: SynthesisSettings,
    *,
    log: Log = print,
    progress: Progress | None = None,
) -> tuple[list[dict], SynthesisReport]:
    """``settings.size`` kept problems (fewer if ``max_candidates`` runs out first) written by
    ``generator``'s model in the style of ``seeds``, and the report of every candidate."""
    if len(seeds) < settings.shots:
        raise ValueError(f"the seed set has {len(seeds)} problems; shots={settings.shots}")
    chat = generator.api == "chat"
    params = SamplingParams(
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        stop=STOP,
        seed=settings.seed,
    )
    seen = {_folded(p.question) for p in seeds}
    uses: Counter[str] = Counter()  # write prompt -> candidates that used it so far
    kept: list[dict] = []
    report = SynthesisReport()
    while len(kept) < settings.size and len(report.outcomes) < settings.candidate_limit:
        start = len(report.outcomes)
        # Ask for the shortfall at the keep rate seen so far (half at first), in one round.
        rate = max(report.counts()["kept"] / start, 0.05) if start else 0.5
        wanted = max(8, round(1.2 * (settings.size - len(kept)) / rate))
        stop = min(start + wanted, settings.candidate_limit)
        shots = [_shots(seeds, settings, i) for i in range(start, stop)]
        prompts = [_write_prompt(s, chat) for s in shots]
        requests = []
        for prompt in prompts:
            requests.append((prompt, uses[prompt]))
            uses[prompt] += 1
        written = generator.samples(requests, params, progress=progress)
        report.write_tokens += sum(c.num_tokens for c in written)
        parsed = [_parse_written(c.text) for c in written]
        to_solve: list[int] = []
        for k, problem in enumerate(parsed):
            if problem is not None and _folded(problem[0]) not in seen:
                seen.add(_folded(problem[0]))
                to_solve.append(k)
        solve_requests = [
            (_solve_prompt(shots[k], parsed[k][0], chat), v)  # type: ignore[index]
            for k in to_solve
            for v in range(settings.votes)
        ]
        solved = generator.samples(
            solve_requests, params, progress=progress, per_prompt=settings.votes
        )
        report.solve_tokens += sum(c.num_tokens for c in solved)
        votes = {
            k: [_solved(c.text) for c in solved[n * settings.votes : (n + 1) * settings.votes]]
            for n, k in enumerate(to_solve)
        }
        for k, problem in enumerate(parsed):
            if problem is None:
                report.outcomes.append("unparsable")
            elif k not in votes:
                report.outcomes.append("duplicate")
            else:
                row = _agreed(problem, votes[k], settings, start + k, generator.model)
                report.outcomes.append("kept" if row else "disagreed")
                if row:
                    kept.append(row)
        log(
            f"synthesis: candidates {start}-{stop - 1}: "
            + ", ".join(f"{n} {o}" for o, n in report.counts().items())
            + f"; {min(len(kept), settings.size)}/{settings.size} kept"
        )
    return kept[: settings.size], report


def _shots(seeds: Sequence[RealProblem], settings: SynthesisSettings, i: int) -> list:
    return random.Random(f"synthesis/{settings.seed}/{i}").sample(list(seeds), settings.shots)


def _example(problem: RealProblem) -> str:
    return f"Question: {problem.question.strip()}\nAnswer: {problem.solution.strip()}"


def _write_prompt(shots: Sequence[RealProblem], chat: bool) -> str:
    examples = "\n\n".join(_example(p) for p in shots)
    if chat:
        return f"{WRITE_INSTRUCTION}\n\n{examples}\n\n{WRITE_REQUEST}"
    return f"{examples}\n\nQuestion:"


def _solve_prompt(shots: Sequence[RealProblem], question: str, chat: bool) -> str:
    examples = "\n\n".join(_example(p) for p in shots)
    if chat:
        return f"{WRITE_INSTRUCTION}\n\n{examples}\n\n{SOLVE_REQUEST}\n\nQuestion: {question}"
    return f"{examples}\n\nQuestion: {question}\nAnswer:"


def _folded(question: str) -> str:
    return _SPACE.sub(" ", question).strip().lower()


def _parse_written(text: str) -> tuple[str, str, str] | None:
    """``(question, solution, answer)`` of a written candidate, or None if it breaks the rules."""
    text = "\n" + text.strip()
    if text.startswith("\nQuestion:"):
        text = "\n" + text[len("\nQuestion:") :].strip()
    parts = _ANSWER_LABEL.split(text, maxsplit=1)
    if len(parts) != 2 or not parts[0].strip():
        return None
    solution = _through_answer_line(parts[1])
    if solution is None:
        return None
    answer, _steps = gsm8k_answer(solution)
    return parts[0].strip(), solution, answer


def _through_answer_line(text: str) -> str | None:
    """The solution up to its ``####`` line, calculator notes removed, if it is well formed."""
    lines = strip_calculator_notes(text).strip().split("\n")
    end = next((i for i, line in enumerate(lines) if line.lstrip().startswith("####")), None)
    if end is None:
        return None
    solution = "\n".join(line.rstrip() for line in lines[: end + 1])
    try:
        gsm8k_answer(solution)
    except ValueError:
        return None
    return solution


def _solved(text: str) -> tuple[str, str] | None:
    """``(answer, solution)`` of a vote, or None without a well-formed ``####`` line."""
    text = text.strip()
    if text.startswith("Answer:"):
        text = text[len("Answer:") :]
    solution = _through_answer_line(text)
    return None if solution is None else (gsm8k_answer(solution)[0], solution)


def _agreed(
    problem: tuple[str, str, str],
    votes: Sequence[tuple[str, str] | None],
    settings: SynthesisSettings,
    index: int,
    model: str,
) -> dict | None:
    """The pool row of a candidate whose votes agree enough, else None."""
    question, solution, writer_answer = problem
    values = [Fraction(v[0]) if v is not None else None for v in votes]
    counted = Counter(v for v in values if v is not None)
    if not counted:
        return None
    writer = Fraction(writer_answer)
    # The most common answer; a tie goes to the writer's answer, then to the earliest vote.
    best = max(counted, key=lambda v: (counted[v], v == writer, -values.index(v)))
    agreement = counted[best] / len(votes)
    if counted[best] < 2 or agreement < settings.min_agreement:
        return None
    if writer != best:
        solution = next(v[1] for v, value in zip(votes, values, strict=True) if value == best)
    return {
        "question": question,
        "answer": solution,
        "agreement": agreement,
        "votes": [v[0] if v is not None else None for v in votes],
        "writer_answer": writer_answer,
        "writer_agrees": writer == best,
        "candidate": index,
        "teacher": model,
    }


def settings_record(settings: SynthesisSettings, generator: OpenAIGenerator) -> dict:
    """The settings and the server of a pool, for its summary file."""
    return {
        **asdict(settings),
        "base_url": generator.base_url,
        "model": generator.model,
        "api": generator.api,
    }
