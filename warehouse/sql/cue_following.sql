-- The shortcut cue at test (the embedded chain task): of the choices where a dead end is
-- stated before the step to take, the share each method's greedy answers followed (wrote a
-- step for the first-listed sibling), per data size and seed. No rows for a task without
-- per-step ground truth. Train with task.embedded.cue_rate set to make the cue a shortcut.
SELECT
    data_size,
    seed,
    method,
    sum(cue_points)                                          AS misleading_choices,
    sum(cue_followed)                                        AS followed,
    round(sum(cue_followed) / nullif(sum(cue_points), 0), 4) AS share_followed
FROM evaluations
WHERE cue_points IS NOT NULL
GROUP BY data_size, seed, method
HAVING sum(cue_points) > 0
ORDER BY data_size, seed, method;
