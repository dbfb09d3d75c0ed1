-- Mean Q-value and advantage by step position, for negatives and positives.
SELECT
    data_size,
    sample_is_correct                 AS positive,
    step_idx,
    count(*)                          AS steps,
    round(avg(q_value), 4)            AS mean_q,
    round(avg(advantage), 4)          AS mean_advantage
FROM step_advantages
GROUP BY data_size, sample_is_correct, step_idx
ORDER BY data_size, positive, step_idx;
