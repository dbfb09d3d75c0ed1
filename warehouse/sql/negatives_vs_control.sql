-- What the per-step negatives add: per-step DPO against nll_control (the same pairs, schedule
-- and updates from pi_sft with each rejected side set to its chosen side) of the same data
-- size and seed on the same test problems. The mean paired difference in greedy accuracy
-- (points; per seed, then averaged over seeds) and the (seed, problem) pairs that only
-- per-step DPO gets right (wins) or only the control (losses). Below 0, the stage does better
-- without its negatives. Bootstrap intervals are in the scaling_curves report. No rows for a
-- warehouse made before the control existed.
WITH answered AS (  -- one row per (size, seed, problem) that both methods answered
    SELECT
        data_size, seed, problem_id,
        max(coalesce(is_correct, false)::INTEGER) FILTER (method = 'per_step_dpo') AS dpo,
        max(coalesce(is_correct, false)::INTEGER) FILTER (method = 'nll_control')  AS ctl
    FROM evaluations
    WHERE method IN ('per_step_dpo', 'nll_control')
    GROUP BY data_size, seed, problem_id
    HAVING count(DISTINCT method) = 2
)
SELECT
    data_size,
    count(DISTINCT seed)                                              AS seeds,
    count(*)                                                          AS pairs,
    -- each row weighs 1/(its seed's pairs): the mean over seeds of each seed's mean
    round(100 * sum((dpo - ctl) / seed_pairs) / count(DISTINCT seed), 2) AS diff_points,
    count(*) FILTER (dpo > ctl)                                       AS wins,
    count(*) FILTER (dpo < ctl)                                       AS losses
FROM (SELECT *, count(*) OVER (PARTITION BY data_size, seed) AS seed_pairs FROM answered)
GROUP BY data_size
ORDER BY data_size;
