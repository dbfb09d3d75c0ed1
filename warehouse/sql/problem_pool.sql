-- The problem pool by split: size and mean number of needed steps.
SELECT
    split,
    source,
    count(*)                    AS problems,
    round(avg(n_steps), 2)      AS mean_steps
FROM problems
GROUP BY split, source
ORDER BY split;
