-- Where negatives first go wrong: the share of negatives whose first pit is each step.
SELECT
    data_size,
    seed,
    step_idx                                                        AS pit_step,
    count(*)                                                        AS negatives,
    round(count(*) / sum(count(*)) OVER (PARTITION BY data_size, seed), 4) AS share
FROM step_advantages
WHERE is_first_pit
GROUP BY data_size, seed, step_idx
ORDER BY data_size, seed, step_idx;
