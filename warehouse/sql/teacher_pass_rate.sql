-- Teacher solutions per partition: how many, and how many the verifier accepts.
SELECT
    data_size,
    seed,
    count(*)                                  AS solutions,
    count(DISTINCT problem_id)                AS problems,
    round(avg(is_correct::INTEGER), 4)        AS pass_rate
FROM teacher_solutions
GROUP BY data_size, seed
ORDER BY data_size, seed;
