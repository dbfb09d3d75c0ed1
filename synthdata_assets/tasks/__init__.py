"""The built-in tasks: ``embedded`` (word problems, the default), ``star_graph`` (the didactic
path-star task) and ``realdata`` (GSM8K and MATH files).

A generated problem carries a ``spec`` (JSON) from which its task knows the ground truth of
every step. The functions here read any spec and answer for the task that wrote it, so the
credit and evaluation stages need not know which task a study runs.
"""

from __future__ import annotations

from synthdata_assets.tasks import embedded, star_graph


def step_labels(spec: str, solution: str) -> list[str]:
    """The ground truth of each line of ``solution``; see each task's ``step_labels``."""
    if star_graph.is_spec(spec):
        return star_graph.step_labels(spec, solution)
    return embedded.step_labels(spec, solution)


def first_wrong_step(spec: str, solution: str) -> int | None:
    """The 1-based index of the solution's first wrong line, or None."""
    if star_graph.is_spec(spec):
        return star_graph.first_wrong_step(spec, solution)
    return embedded.first_wrong_step(spec, solution)


def cue_followed(spec: str, solution: str) -> tuple[int | None, int | None]:
    """The embedded task's shortcut-cue count (misleading choices, how many were followed);
    ``(None, None)`` for a task without a cue."""
    if star_graph.is_spec(spec):
        return None, None
    return embedded.cue_followed(spec, solution)


def true_solution(problem_id: str, spec: str) -> str:
    """The task's exact solution of the problem a spec describes."""
    if star_graph.is_spec(spec):
        return star_graph.solution_text(star_graph.StarProblem.from_spec(problem_id, spec).path)
    problem = embedded.EmbeddedProblem.from_spec(problem_id, spec)
    return "\n".join([*embedded.solve(problem), embedded.final_answer_line(problem.answer)])
