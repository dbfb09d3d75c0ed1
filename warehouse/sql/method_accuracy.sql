-- Greedy test accuracy of every method at every data size (mean over seeds).
SELECT
    method,
    data_size,
    count(DISTINCT seed)                     AS seeds,
    round(avg(is_correct::INTEGER), 4)       AS accuracy
FROM evaluations
GROUP BY method, data_size
ORDER BY method, data_size;
