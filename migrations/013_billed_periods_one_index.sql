-- billed_periods keeps one index, its primary key (tenant_id, subscription_id, period_start).
--
-- billed_periods_by_end answered "was the period that ends where this one starts billed?"
-- (an in-advance fee already charged). The primary key answers it as well: the periods a
-- run bills for one subscription follow each other without overlapping, so the one that
-- ends at a time T, if any, is the latest one starting before T, one backward step in
-- the primary key. Each billed period paid for a second index entry and its WAL record:
-- about a quarter of the database's work for the billed-periods insert of a chunk.
drop index if exists billed_periods_by_end;
