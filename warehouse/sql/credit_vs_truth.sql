-- Credit assignment against ground truth (the embedded task's per-step labels), per data
-- size, seed and rollout policy: the figures of synthdata_assets.advantages.credit_vs_truth.
-- Pits: over the negatives with a Monte Carlo first pit, where t is the true first wrong step,
-- exact (pit = t), within_one (t - 1 <= pit <= t), early (pit < t - 1), late (pit > t) and
-- no_true_wrong (every step true, e.g. cut off). Spurious flag: precision and recall against
-- true_label = 'spurious' over the steps of rolled-out positives (credit.rollout_positives).
-- ground_truth is false (and those figures null) for a task without per-step labels.
WITH steps AS (
    SELECT data_size, seed, 'best_of_k' AS rollout_policy, sample_id, step_idx,
           sample_is_correct, true_label, is_true_first_wrong,
           is_first_pit_best_of_k AS is_pit, is_spurious_best_of_k AS is_flagged
    FROM step_advantages
    WHERE step_idx >= 1 AND is_first_pit_best_of_k IS NOT NULL
    UNION ALL
    SELECT data_size, seed, 'pi_sft', sample_id, step_idx,
           sample_is_correct, true_label, is_true_first_wrong,
           is_first_pit_pi_sft, is_spurious_pi_sft
    FROM step_advantages
    WHERE step_idx >= 1 AND is_first_pit_pi_sft IS NOT NULL
),
negatives AS (
    SELECT data_size, seed, rollout_policy, sample_id,
           min(step_idx) FILTER (WHERE is_pit)              AS pit,
           min(step_idx) FILTER (WHERE is_true_first_wrong) AS t,
           bool_or(true_label IS NOT NULL)                  AS labelled
    FROM steps
    WHERE NOT sample_is_correct
    GROUP BY data_size, seed, rollout_policy, sample_id
),
pits AS (
    SELECT data_size, seed, rollout_policy,
           count(*)                                         AS negatives,
           count(pit)                                       AS negatives_with_pit,
           count(*) FILTER (WHERE pit IS NOT NULL AND labelled) AS judged,
           count(*) FILTER (WHERE labelled AND pit = t)     AS exact,
           count(*) FILTER (WHERE labelled AND pit BETWEEN t - 1 AND t) AS within_one,
           count(*) FILTER (WHERE labelled AND pit < t - 1) AS early,
           count(*) FILTER (WHERE labelled AND pit > t)     AS late,
           count(*) FILTER (WHERE labelled AND pit IS NOT NULL AND t IS NULL) AS no_true_wrong
    FROM negatives
    GROUP BY data_size, seed, rollout_policy
),
flags AS (
    SELECT data_size, seed, rollout_policy,
           count(*)                                                 AS positive_steps,
           count(*) FILTER (WHERE true_label = 'spurious')          AS true_spurious,
           count(*) FILTER (WHERE is_flagged)                       AS flagged_spurious,
           count(*) FILTER (WHERE is_flagged AND true_label = 'spurious') AS hits
    FROM steps
    WHERE sample_is_correct
    GROUP BY data_size, seed, rollout_policy
),
groups AS (
    SELECT data_size, seed, rollout_policy, bool_or(true_label IS NOT NULL) AS ground_truth
    FROM steps
    GROUP BY data_size, seed, rollout_policy
)
SELECT
    g.data_size,
    g.seed,
    g.rollout_policy,
    g.ground_truth,
    coalesce(p.negatives, 0)                                            AS negatives,
    coalesce(p.negatives_with_pit, 0)                                   AS negatives_with_pit,
    round(p.exact / nullif(p.judged, 0), 4)                             AS share_pit_exact,
    round(p.within_one / nullif(p.judged, 0), 4)                        AS share_pit_within_one,
    round(p.early / nullif(p.judged, 0), 4)                             AS share_pit_early,
    round(p.late / nullif(p.judged, 0), 4)                              AS share_pit_late,
    round(p.no_true_wrong / nullif(p.judged, 0), 4)                     AS share_no_true_wrong,
    coalesce(f.positive_steps, 0)                                       AS positive_steps,
    CASE WHEN g.ground_truth THEN coalesce(f.true_spurious, 0) END      AS true_spurious,
    coalesce(f.flagged_spurious, 0)                                     AS flagged_spurious,
    CASE WHEN g.ground_truth
         THEN round(f.hits / nullif(f.flagged_spurious, 0), 4) END      AS spurious_precision,
    CASE WHEN g.ground_truth
         THEN round(f.hits / nullif(f.true_spurious, 0), 4) END         AS spurious_recall
FROM groups g
LEFT JOIN pits p USING (data_size, seed, rollout_policy)
LEFT JOIN flags f USING (data_size, seed, rollout_policy)
ORDER BY g.data_size, g.seed, g.rollout_policy;
