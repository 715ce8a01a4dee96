-- Refusals of a job answered without an R-MAC (an error status word carries none, GP Amendment D
-- section 6.2.5): anyone on the path could have written them, so they do not end the job at once;
-- after a bound of them it fails (docs/decisions.md, "an unauthenticated refusal is not final").
ALTER TABLE job ADD COLUMN refusals int NOT NULL DEFAULT 0;
