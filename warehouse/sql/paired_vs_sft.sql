-- Every method against SFT of the same data size and seed on the same test problems: the mean
-- paired difference in greedy accuracy (points; per seed, then averaged over seeds) and the
-- (seed, problem) pairs that only the method gets right (wins) or only SFT (losses).
-- Bootstrap intervals and data multipliers are in the scaling_curves report.
WITH pairs AS (
    SELECT
        m.method,
        m.data_size,
        m.seed,
        coalesce(m.is_correct, false)::INTEGER AS method_right,
        coalesce(s.is_correct, false)::INTEGER AS sft_right
    FROM evaluations AS m
    JOIN evaluations AS s
        ON s.method = 'sft'
        AND s.data_size = m.data_size
        AND s.seed = m.seed
        AND s.problem_id = m.problem_id
    WHERE m.method <> 'sft'
),
per_seed AS (
    SELECT
        method,
        data_size,
        seed,
        count(*)                                                  AS pairs,
        avg(method_right - sft_right)                             AS difference,
        count(*) FILTER (WHERE method_right = 1 AND sft_right = 0) AS wins,
        count(*) FILTER (WHERE method_right = 0 AND sft_right = 1) AS losses
    FROM pairs
    GROUP BY method, data_size, seed
)
SELECT
    method,
    data_size,
    count(*)                         AS seeds,
    sum(pairs)                       AS pairs,
    round(100 * avg(difference), 2)  AS diff_points,
    sum(wins)                        AS wins,
    sum(losses)                      AS losses
FROM per_seed
GROUP BY method, data_size
ORDER BY method, data_size;
