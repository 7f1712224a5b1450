-- The raw limit for intake: gasworks' own booking transaction, written by hand against gasworks'
-- own schema (adapters/db/tables.py), one statement per round trip as a careful hand-written
-- client would send it. Run by bench/intake.py:
--   pgbench -n -M prepared -f bench/booking.sql -D accounts=1000 -c 16 -j 2 -T 20 <database>
-- What it writes, as services/intake.py accept_payment does for a booked wallet payment:
--   the payment under its unique key (channel, channel transaction id), in its final state;
--   the booking's ledger transaction and its two entries (clearing debit, customer balance credit);
--   the customer's cached balance; the meter's purchase serial (the lock every booking takes);
--   the outbox row (the credit order for the meter, unique per meter and purchase serial);
--   the audit row.
-- It does not claim a nonce, price the gas by tariff, post the purchase transaction or write the
-- payment's and the command's timelines: gasworks does, so the ratio is a conservative one.
\set acct random(0, :accounts - 1)
\set amount random(100, 5099)
\set credit -:amount
BEGIN;
INSERT INTO payments (id, channel_id, channel_txn_id, amount_fen, account_no, method, state, received_at)
  VALUES ('pgb_' || md5(random()::text), 'wallet', gen_random_uuid()::text, (:amount)::bigint, '43' || lpad((:acct)::text, 8, '0'), '', 'booked', now())
  ON CONFLICT (channel_id, channel_txn_id) DO NOTHING RETURNING id AS payment_id \gset
INSERT INTO ledger_transactions (kind, payment_id, at, memo) VALUES ('payment_booked', (:payment_id)::text, now(), 'pgbench booking')
  RETURNING id AS txn_id \gset
INSERT INTO ledger_entries (transaction_id, account_code, amount_fen)
  VALUES ((:txn_id)::bigint, 'clearing:' || 'wallet', (:amount)::bigint), ((:txn_id)::bigint, 'prepaid:43' || lpad((:acct)::text, 8, '0'), (:credit)::bigint);
UPDATE ledger_accounts SET entries_sum_fen = entries_sum_fen + (:credit)::bigint WHERE code = 'prepaid:43' || lpad((:acct)::text, 8, '0');
UPDATE meters SET purchase_seq_issued = purchase_seq_issued + 1 WHERE account_no = '43' || lpad((:acct)::text, 8, '0')
  RETURNING serial AS meter_serial, purchase_seq_issued AS purchase_seq \gset
INSERT INTO meter_commands (meter_serial, account_no, kind, route, state, created_at, updated_at, payment_id, purchase_seq, volume_litres, cost_fen, tier_pieces)
  VALUES ((:meter_serial)::text, '43' || lpad((:acct)::text, 8, '0'), 'credit', 'iot', 'pending', now(), now(), (:payment_id)::text, (:purchase_seq)::int, 1, (:amount)::bigint, '[]');
INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (now(), 'pgbench', 'payment.book', 'payment:' || (:payment_id)::text, '{}');
END;
