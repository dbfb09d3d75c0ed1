-- What the per-step negatives add: per-step DPO against nll_control (the same pairs, schedule
-- and updates from pi_sft with each rejected side set to its chosen side) of the same data
-- size and seed on the same test problems. The mean paired difference in greedy accuracy
-- (points; per seed, then averaged over seeds) and the (seed, problem) pairs that only
-- per-step DPO gets right (wins) or only the control (losses). Below 0, the stage does better
-- without its negatives. Bootstrap intervals are in the scaling_curves report. No rows for a
-- warehouse made before the control existed.
WITH pairs AS (
    SELECT
        d.data_size,
        d.seed,
        coalesce(d.is_correct, false)::INTEGER AS dpo_right,
        coalesce(c.is_correct, false)::INTEGER AS control_right
    FROM evaluations AS d
    JOIN evaluations AS c
        ON c.method = 'nll_control'
        AND c.data_size = d.data_size
        AND c.seed = d.seed
        AND c.problem_id = d.problem_id
    WHERE d.method = 'per_step_dpo'
),
per_seed AS (
    SELECT
        data_size,
        seed,
        count(*)                                                       AS pairs,
        avg(dpo_right - control_right)                                 AS difference,
        count(*) FILTER (WHERE dpo_right = 1 AND control_right = 0)    AS wins,
        count(*) FILTER (WHERE dpo_right = 0 AND control_right = 1)    AS losses
    FROM pairs
    GROUP BY data_size, seed
)
SELECT
    data_size,
    count(*)                         AS seeds,
    sum(pairs)                       AS pairs,
    round(100 * avg(difference), 2)  AS diff_points,
    sum(wins)                        AS wins,
    sum(losses)                      AS losses
FROM per_seed
GROUP BY data_size
ORDER BY data_size;
