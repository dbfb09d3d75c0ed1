-- Spurious steps among positives (advantage below credit.spurious_threshold) by data size.
-- Positives are rolled out only with credit.rollout_positives: true.
SELECT
    data_size,
    seed,
    count(*) FILTER (WHERE step_idx >= 1)                 AS positive_steps,
    count(*) FILTER (WHERE is_spurious)                   AS spurious_steps,
    round(avg(is_spurious::INTEGER) FILTER (WHERE step_idx >= 1), 4) AS spurious_share
FROM step_advantages
WHERE sample_is_correct
GROUP BY data_size, seed
ORDER BY data_size, seed;
