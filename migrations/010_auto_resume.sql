-- Automatic resumption: the scheduler role resumes paused subscriptions whose
-- pause_resumes_at has come (billing/services/scheduler.py). This partial index holds only
-- paused subscriptions with a resume time, so a pass reads the due ones and nothing else.
-- A billing run's period advance changes neither status nor pause_resumes_at, so it stays
-- a HOT update (see 008).
create index subscriptions_resume_due on subscriptions (tenant_id, pause_resumes_at)
    where status = 'paused' and pause_resumes_at is not null;
