-- An adversarial schema for backup, restore and compare: nobody tuned the pipeline for it.
--
-- Run with `psql -X -v ON_ERROR_STOP=1 -q -f adversarial.sql` as a superuser, into an empty
-- UTF8 database (PostgreSQL 15, 16, 17). Roles are cluster-wide and created only when missing;
-- everything else is created fresh, in one transaction, so every row sees the same now().
-- Every date is relative to now() and current_date: the 3-month window
-- (cutoff = now() - 3 months) always splits the windowed tables, with no row within 3.5 hours of
-- the cutoff (no date within a day of it), so a backup taken minutes after the load selects the
-- same rows. Data is deterministic: no random().
--
-- Tables (whole = BACKUP_TABLES, windowed = BACKUP_TRANSACTION_TABLES, window column in []):
--   public."Accounts"        whole    quoted mixed-case name and columns ("Region",
--                                     "displayName", "emailDomain"), GENERATED ALWAYS identity,
--                                     email_address (a domain with a CHECK over citext) UNIQUE,
--                                     STORED generated column, jsonb, text[], bytea, nasty text,
--                                     NULLs, BEFORE UPDATE trigger on updated_at
--   public.products          whole    two-column primary key (sku, variant), cents domain, int[]
--   public.contacts          whole    inheritance parent (backed up ONLY itself), id from the
--                                     sequence public.contact_ids that no column owns (setval
--                                     to 500, past the ids the data used)
--   public.vendor_contacts   whole    INHERITS (public.contacts); its FK to ledger.vendors is on
--                                     the child only
--   public.orders            windowed [placed_at timestamptz] range-partitioned by month plus
--                                     DEFAULT (the oldest rows land there), PK (order_id,
--                                     placed_at), FKs declared on the parent, STORED generated
--                                     column, enum, jsonb, text[], nasty text
--   public.payments          windowed [paid_at timestamp without time zone] range-partitioned
--                                     by quarter plus DEFAULT; its FKs are declared on each
--                                     partition, not on the parent (like Pagila's payment)
--   public.secrets           whole    ENABLE + FORCE ROW LEVEL SECURITY, 1,500 rows; policy TO
--                                     adv_app sees all, policy TO PUBLIC sees a tenant's rows
--                                     only when app.tenant_id is set: adv_owner sees 0 rows,
--                                     adv_readonly (BYPASSRLS) 1,500
--   public.sessions          NOT backed up, has rows, nothing references it: restores empty
--   public.account_order_totals  a view
--   ledger.vendors           whole    DEFERRABLE INITIALLY DEFERRED FK to public.vendor_contacts
--                                     (a cycle with vendor_contacts -> vendors)
--   ledger.fx_rates          whole    no primary key, two exact duplicate rows; adv_app reads it
--                                     only through its membership of adv_group
--   ledger.entries           windowed [posted_on date] range-partitioned: entries_archive
--                                     (MINVALUE to 6 months ago, with a UNIQUE (entry_id) of its
--                                     own), monthly partitions, DEFAULT (future-dated rows)
--   "Sales"."Invoices"       windowed ["issuedAt" timestamptz, NULL for 2 drafts] self-reference
--                                     chains, citext FK, FKs into a partitioned table and into
--                                     one partition
--   "Sales"."Leads"          whole    FK into a UNIQUE citext column (matching case-insensitively),
--                                     NOT VALID FK with one violating row, FK into old orders
--
-- Foreign keys, by shape:
--   1  on a partitioned parent: public.orders -> public."Accounts", public.products;
--      ledger.entries -> public."Accounts", ledger.vendors, public.payments
--   2  on each partition only: every partition of public.payments -> public."Accounts" and
--      -> public.orders (order_id, order_placed_at)
--   3  on an inheritance child only: public.vendor_contacts -> ledger.vendors
--   4  into a partitioned table (its key includes the partition key), recent rows -> rows older
--      than the window: "Sales"."Invoices" and payments -> public.orders; ledger.entries ->
--      public.payments (a chain: recent entries -> old payments -> older orders)
--   5  into one partition: "Sales"."Invoices".settles_entry_id -> ledger.entries_archive
--      (entry_id), rows 10 months old and more
--   6  multi-column into a multi-column primary key: public.orders (sku, variant) ->
--      public.products
--   7  into a UNIQUE non-primary column: "Sales"."Leads".owner_email and
--      "Sales"."Invoices".billing_email (citext, some upper-case) -> public."Accounts".email
--   8  across schemas: ledger.entries -> public; ledger.vendors -> public.vendor_contacts;
--      public.vendor_contacts -> ledger.vendors; "Sales"."Invoices" -> ledger.entries_archive;
--      "Sales"."Leads" -> ledger.vendors; "Sales" -> public
--   9  DEFERRABLE INITIALLY DEFERRED: ledger.vendors.primary_contact_id
--   10 self-reference on a windowed table: "Sales"."Invoices".corrects_invoice_id, ten chains of
--      four (a recent correction of a correction of a correction of an old invoice)
--   11 NOT VALID with a violating row: "Sales"."Leads".vendor_id (lead 150 -> vendor 9999)
--   Whole tables referenced from windowed ones ("Accounts", products, vendors), a whole table
--   referencing a windowed one (Leads -> old orders), and recent rows of every windowed table
--   referencing rows older than the window in another windowed table.
--
-- Roles: adv_owner (LOGIN, owns every object), adv_app (NOLOGIN, DML grants, named in the RLS
-- policy), adv_readonly (LOGIN, BYPASSRLS, member of pg_read_all_data: the read-only backup
-- role), adv_group (NOLOGIN, adv_app is a member; the only grant on ledger.fx_rates).

SET client_min_messages = warning;
SET client_encoding = 'UTF8';
SET TimeZone = 'UTC';
\set cutoff '(now() - interval ''3 months'')'

-- Roles: cluster-wide, so created only when missing (also when two loads race).
DO $$
BEGIN
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'adv_owner') THEN
            CREATE ROLE adv_owner LOGIN PASSWORD 'adv_owner_pw';
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'adv_app') THEN
            CREATE ROLE adv_app NOLOGIN;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'adv_readonly') THEN
            CREATE ROLE adv_readonly LOGIN NOSUPERUSER BYPASSRLS PASSWORD 'adv_readonly_pw';
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'adv_group') THEN
            CREATE ROLE adv_group NOLOGIN;
        END IF;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
END $$;

DO $$
BEGIN
    IF NOT pg_has_role('adv_readonly', 'pg_read_all_data', 'MEMBER') THEN
        GRANT pg_read_all_data TO adv_readonly;
    END IF;
    IF NOT pg_has_role('adv_app', 'adv_group', 'MEMBER') THEN
        GRANT adv_group TO adv_app;
    END IF;
EXCEPTION WHEN unique_violation THEN NULL;
END $$;

BEGIN;

DO $$
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO adv_owner', current_database());
END $$;
GRANT CREATE ON SCHEMA public TO adv_owner;
GRANT USAGE ON SCHEMA public TO adv_app;
CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public;

SET ROLE adv_owner;

CREATE SCHEMA ledger;
CREATE SCHEMA "Sales";

CREATE TYPE public.order_status AS ENUM ('pending', 'paid', 'shipped', 'on hold', 'refunded');
CREATE TYPE "Sales"."LeadStage" AS ENUM ('New', 'Qualified', 'Won', 'Lost');
CREATE DOMAIN public.cents AS bigint CHECK (VALUE >= 0);
CREATE DOMAIN public.email_address AS public.citext CHECK (VALUE ~ '^[^@\s]+@[^@\s]+$');

CREATE FUNCTION public.touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

-- Owned by no column: restoring it needs its own setval.
CREATE SEQUENCE public.contact_ids AS integer;

CREATE TABLE public."Accounts" (
    account_id    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         public.email_address NOT NULL UNIQUE,
    "Region"      text NOT NULL,
    "displayName" text,
    tags          text[],
    profile       jsonb,
    avatar        bytea,
    credit_limit  public.cents NOT NULL DEFAULT 0,
    "emailDomain" text GENERATED ALWAYS AS (split_part(email::text, '@', 2)) STORED,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
COMMENT ON TABLE public."Accounts" IS 'Customer accounts: "quoted", it''s got a \ backslash';

CREATE TRIGGER accounts_touch_updated_at BEFORE UPDATE ON public."Accounts"
    FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at();

CREATE TABLE public.products (
    sku         text NOT NULL,
    variant     smallint NOT NULL,
    title       text NOT NULL,
    price_cents public.cents NOT NULL,
    dims        integer[],
    attributes  jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (sku, variant)
);

CREATE TABLE public.contacts (
    contact_id integer NOT NULL DEFAULT nextval('public.contact_ids') PRIMARY KEY,
    full_name  text NOT NULL,
    phone      text,
    notes      text
);

CREATE TABLE ledger.vendors (
    vendor_id          integer PRIMARY KEY,
    name               text NOT NULL,
    iban               text,
    primary_contact_id integer
);

CREATE TABLE public.vendor_contacts (
    vendor_id integer NOT NULL REFERENCES ledger.vendors (vendor_id),
    PRIMARY KEY (contact_id)
) INHERITS (public.contacts);

ALTER TABLE ledger.vendors ADD CONSTRAINT vendors_primary_contact_fkey
    FOREIGN KEY (primary_contact_id) REFERENCES public.vendor_contacts (contact_id)
    DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE ledger.fx_rates (
    currency char(3) NOT NULL,
    rate_on  date NOT NULL,
    rate     numeric(12, 6) NOT NULL,
    source   text
);

CREATE TABLE public.orders (
    order_id     bigint NOT NULL,
    placed_at    timestamptz NOT NULL,
    account_id   integer NOT NULL REFERENCES public."Accounts" (account_id),
    sku          text NOT NULL,
    variant      smallint NOT NULL,
    quantity     integer NOT NULL CHECK (quantity > 0),
    unit_cents   public.cents NOT NULL,
    total_cents  bigint GENERATED ALWAYS AS (quantity * unit_cents) STORED,
    status       public.order_status NOT NULL,
    coupon_codes text[],
    payload      jsonb,
    note         text,
    PRIMARY KEY (order_id, placed_at),
    FOREIGN KEY (sku, variant) REFERENCES public.products (sku, variant)
) PARTITION BY RANGE (placed_at);
CREATE INDEX orders_placed_at_idx ON public.orders (placed_at);

CREATE TABLE public.payments (
    payment_id      bigint NOT NULL,
    paid_at         timestamp without time zone NOT NULL,
    account_id      integer NOT NULL,
    order_id        bigint NOT NULL,
    order_placed_at timestamptz NOT NULL,
    amount          numeric(12, 2) NOT NULL,
    method          text NOT NULL,
    receipt         bytea,
    PRIMARY KEY (payment_id, paid_at)
) PARTITION BY RANGE (paid_at);

CREATE TABLE ledger.entries (
    entry_id        bigint NOT NULL,
    posted_on       date NOT NULL,
    account_id      integer NOT NULL REFERENCES public."Accounts" (account_id),
    vendor_id       integer REFERENCES ledger.vendors (vendor_id),
    payment_id      bigint,
    payment_paid_at timestamp without time zone,
    amount          numeric(14, 2) NOT NULL,
    memo            text,
    PRIMARY KEY (entry_id, posted_on),
    FOREIGN KEY (payment_id, payment_paid_at) REFERENCES public.payments (payment_id, paid_at)
) PARTITION BY RANGE (posted_on);

-- Partitions relative to today, so they cover the data whenever the script runs.
DO $$
DECLARE
    month_start   date := date_trunc('month', current_date)::date;
    quarter_start date := date_trunc('quarter', current_date)::date;
    archive_end   date := (date_trunc('month', current_date) - interval '6 months')::date;
    bound         date;
    part          regclass;
BEGIN
    FOR i IN -12..1 LOOP
        bound := (month_start + make_interval(months => i))::date;
        EXECUTE format(
            'CREATE TABLE public.%I PARTITION OF public.orders FOR VALUES FROM (%L) TO (%L)',
            to_char(bound, '"orders_y"YYYY"m"MM'), bound::timestamptz,
            (bound + interval '1 month')::timestamptz);
    END LOOP;
    CREATE TABLE public.orders_default PARTITION OF public.orders DEFAULT;

    FOR i IN -4..2 LOOP
        bound := (quarter_start + make_interval(months => 3 * i))::date;
        EXECUTE format(
            'CREATE TABLE public.%I PARTITION OF public.payments FOR VALUES FROM (%L) TO (%L)',
            to_char(bound, '"payments_y"YYYY"q"Q'), bound::timestamp,
            bound + interval '3 months');
    END LOOP;
    CREATE TABLE public.payments_default PARTITION OF public.payments DEFAULT;
    -- The foreign keys of payments live on its partitions only, as in Pagila.
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'public.payments'::regclass ORDER BY inhrelid LOOP
        EXECUTE format('ALTER TABLE %s ADD FOREIGN KEY (account_id) '
                       'REFERENCES public."Accounts" (account_id)', part);
        EXECUTE format('ALTER TABLE %s ADD FOREIGN KEY (order_id, order_placed_at) '
                       'REFERENCES public.orders (order_id, placed_at)', part);
        EXECUTE format('CREATE INDEX ON %s (paid_at)', part);
    END LOOP;

    EXECUTE format('CREATE TABLE ledger.entries_archive PARTITION OF ledger.entries '
                   'FOR VALUES FROM (MINVALUE) TO (%L)', archive_end);
    FOR i IN -6..1 LOOP
        bound := (month_start + make_interval(months => i))::date;
        EXECUTE format(
            'CREATE TABLE ledger.%I PARTITION OF ledger.entries FOR VALUES FROM (%L) TO (%L)',
            to_char(bound, '"entries_y"YYYY"m"MM'), bound, (bound + interval '1 month')::date);
    END LOOP;
    CREATE TABLE ledger.entries_default PARTITION OF ledger.entries DEFAULT;
END $$;

-- A key of one partition only: rows in other partitions cannot be referenced through it.
ALTER TABLE ledger.entries_archive
    ADD CONSTRAINT entries_archive_entry_id_key UNIQUE (entry_id);

CREATE TABLE "Sales"."Invoices" (
    invoice_id          bigint PRIMARY KEY,
    "invoiceNo"         text NOT NULL UNIQUE,
    "issuedAt"          timestamptz,
    order_id            bigint NOT NULL,
    order_placed_at     timestamptz NOT NULL,
    billing_email       public.citext NOT NULL REFERENCES public."Accounts" (email),
    corrects_invoice_id bigint REFERENCES "Sales"."Invoices" (invoice_id),
    settles_entry_id    bigint REFERENCES ledger.entries_archive (entry_id),
    amount_due          numeric(12, 2) NOT NULL,
    lines               jsonb NOT NULL,
    FOREIGN KEY (order_id, order_placed_at) REFERENCES public.orders (order_id, placed_at)
);
CREATE INDEX "Invoices_issuedAt_idx" ON "Sales"."Invoices" ("issuedAt");

CREATE TABLE "Sales"."Leads" (
    lead_id                   integer PRIMARY KEY,
    owner_email               public.citext NOT NULL REFERENCES public."Accounts" (email),
    stage                     "Sales"."LeadStage" NOT NULL,
    vendor_id                 integer,
    converted_order_id        bigint,
    converted_order_placed_at timestamptz,
    notes                     text,
    FOREIGN KEY (converted_order_id, converted_order_placed_at)
        REFERENCES public.orders (order_id, placed_at)
);

CREATE TABLE public.secrets (
    secret_id  integer PRIMARY KEY,
    account_id integer NOT NULL REFERENCES public."Accounts" (account_id),
    tenant_id  integer NOT NULL,
    label      text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE public.sessions (
    session_id uuid PRIMARY KEY,
    account_id integer NOT NULL REFERENCES public."Accounts" (account_id),
    started_at timestamptz NOT NULL,
    user_agent text
);

CREATE VIEW public.account_order_totals AS
SELECT a.account_id, a."Region", count(o.order_id) AS orders,
       coalesce(sum(o.total_cents), 0) AS total_cents
FROM public."Accounts" a LEFT JOIN public.orders o ON o.account_id = a.account_id
GROUP BY a.account_id;

-- Text that breaks naive CSV, COPY and quoting: the data below cycles through it.
CREATE TEMP TABLE nasty (n integer PRIMARY KEY, value text) ON COMMIT DROP;
INSERT INTO nasty VALUES
    (0, NULL),
    (1, ''),
    (2, 'comma, separated, values'),
    (3, 'double "quoted" word'),
    (4, 'single ''quoted'' word'),
    (5, E'first line\nsecond line'),
    (6, E'tab\tseparated\tcolumns'),
    (7, E'back\\slash, \\N and a double \\\\'),
    (8, E'\\.'),
    (9, E'before\n\\.\nafter an end-of-copy marker line'),
    (10, E'carriage\r\nreturn'),
    (11, E'\\N'),
    (12, 'NULL'),
    (13, E'Z\u00fcrich \u2013 \u6771\u4eac \U0001F642'),
    (14, '  padded  '),
    (15, '"'),
    (16, E'ends with a backslash \\'),
    (17, E',"mixed",''quotes''\n\tand\ttabs\\');

INSERT INTO public."Accounts" ("Region", email, "displayName", tags, profile, avatar,
                               credit_limit, created_at, updated_at)
SELECT (ARRAY['EU-West', 'us-east', 'APAC', E'Z\u00fcrich'])[1 + g % 4],
       'user' || g || '@example.com',
       (SELECT value FROM nasty WHERE n = g % 18),
       CASE g % 5 WHEN 0 THEN NULL
                  WHEN 1 THEN '{}'::text[]
                  WHEN 2 THEN ARRAY['vip', 'a,b']
                  WHEN 3 THEN ARRAY['quote"d', NULL, '{brace}']
                  ELSE ARRAY[E'back\\slash', '', 'NULL'] END,
       CASE WHEN g % 9 = 0 THEN NULL ELSE jsonb_build_object(
           'tier', g % 3,
           'name', (SELECT value FROM nasty WHERE n = (g + 5) % 18),
           'nested', jsonb_build_object('list', jsonb_build_array(g, g * 2, NULL),
                                        'accent', E'caf\u00e9'),
           'empty', '{}'::jsonb) END,
       CASE WHEN g % 7 = 0 THEN NULL
            WHEN g = 1 THEN (SELECT string_agg(set_byte('\x00'::bytea, 0, b), ''::bytea
                                               ORDER BY b) FROM generate_series(0, 255) b)
            ELSE decode(lpad(to_hex(g), 4, '0') || '00ff5c0a0d2c22', 'hex') END,
       (g % 10) * 5000,
       now() - interval '400 days' - g * interval '1 day',
       now() - interval '400 days' - g * interval '1 day'
FROM generate_series(1, 200) g
ORDER BY g;

INSERT INTO public.products (sku, variant, title, price_cents, dims, attributes)
SELECT 'SKU-' || lpad(s::text, 3, '0'), v,
       coalesce((SELECT value FROM nasty WHERE n = (s * 3 + v) % 18), 'Product ' || s),
       100 + s * 37 + v * 5,
       CASE WHEN v = 3 THEN NULL ELSE ARRAY[s, v, s * v] END,
       jsonb_build_object('color', (ARRAY['red', 'green', 'blue'])[v], 'size', s)
FROM generate_series(1, 20) s, generate_series(1, 3) v
ORDER BY s, v;

INSERT INTO public.contacts (full_name, phone, notes)
SELECT 'Contact ' || g, CASE WHEN g % 4 = 0 THEN NULL ELSE '+41 44 ' || (1000000 + g) END,
       (SELECT value FROM nasty WHERE n = g % 18)
FROM generate_series(1, 100) g
ORDER BY g;

-- Vendors name their primary contacts before those exist: the deferred key waits for COMMIT.
INSERT INTO ledger.vendors (vendor_id, name, iban, primary_contact_id)
SELECT g, 'Vendor ' || g || CASE WHEN g % 3 = 0 THEN ', Ltd.' ELSE '' END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'CH93 0076 2011 6238 5295 ' || g END,
       CASE WHEN g = 20 THEN NULL ELSE 100 + 2 * g - 1 END
FROM generate_series(1, 20) g;

INSERT INTO public.vendor_contacts (full_name, phone, notes, vendor_id)
SELECT 'Vendor contact ' || g, '+1 555 ' || (2000 + g),
       (SELECT value FROM nasty WHERE n = (g + 7) % 18), 1 + (g - 1) / 2
FROM generate_series(1, 40) g
ORDER BY g;

-- Ids up to 500 were handed out elsewhere: the sequence is ahead of max(contact_id).
SELECT setval('public.contact_ids', 500);

INSERT INTO ledger.fx_rates (currency, rate_on, rate, source)
SELECT c, current_date - d, round(1 + ((d * 7 + length(c) * i) % 17) / 100.0, 6),
       CASE WHEN d % 6 = 0 THEN NULL ELSE 'ECB, daily' END
FROM unnest(ARRAY['EUR', 'USD', 'CHF', 'JPY']) WITH ORDINALITY AS cur(c, i),
     generate_series(0, 29) d;
INSERT INTO ledger.fx_rates
SELECT * FROM ledger.fx_rates WHERE currency = 'CHF' AND rate_on >= current_date - 1;

-- Orders 1-900 are older than the window (the oldest ~15 months, in orders_default),
-- 901-1200 are inside it.
INSERT INTO public.orders (order_id, placed_at, account_id, sku, variant, quantity, unit_cents,
                           status, coupon_codes, payload, note)
SELECT g,
       CASE WHEN g <= 900
            THEN :cutoff - ((900 - g) * interval '9 hours' + interval '4 hours 30 minutes')
            ELSE :cutoff + ((g - 901) * interval '7 hours' + interval '3 hours 30 minutes') END,
       1 + (g * 7) % 200,
       'SKU-' || lpad((1 + g % 20)::text, 3, '0'), 1 + g % 3,
       1 + g % 5, 100 + g % 900,
       (enum_range(NULL::public.order_status))[1 + g % 5],
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['SPRING, 10%'] ELSE ARRAY['A', 'B"C'] END,
       jsonb_build_object('channel', (ARRAY['web', 'app', 'phone'])[1 + g % 3],
                          'gift', g % 6 = 0,
                          'message', (SELECT value FROM nasty WHERE n = (g + 11) % 18)),
       (SELECT value FROM nasty WHERE n = g % 18)
FROM generate_series(1, 1200) g;

-- Payments 1-600 are older than the window, 601-900 inside it; the odd recent ones pay for
-- orders placed before the window.
INSERT INTO public.payments (payment_id, paid_at, account_id, order_id, order_placed_at,
                             amount, method, receipt)
SELECT p.g, p.paid_at, o.account_id, o.order_id, o.placed_at,
       round(o.total_cents / 100.0, 2),
       (ARRAY['card', 'bank transfer', 'cash, partly', 'voucher "gift"'])[1 + p.g % 4],
       CASE WHEN p.g % 3 = 0 THEN NULL ELSE decode(md5('receipt' || p.g), 'hex') END
FROM (SELECT g,
             CASE WHEN g <= 600
                  THEN (:cutoff AT TIME ZONE 'UTC')
                       - ((600 - g) * interval '13 hours' + interval '6 hours 30 minutes')
                  ELSE (:cutoff AT TIME ZONE 'UTC')
                       + ((g - 601) * interval '7 hours' + interval '3 hours 30 minutes') END
                 AS paid_at,
             CASE WHEN g <= 600 THEN g
                  WHEN g % 2 = 1 THEN 601 + (g - 601) / 2
                  ELSE g + 299 END AS order_id
      FROM generate_series(1, 900) g) p
JOIN public.orders o ON o.order_id = p.order_id;

-- Entries 1-560 are older than the window (1-300 always in entries_archive), 561-780 inside
-- it, 781-800 dated in the future (in entries_default). Recent entries point at old payments.
INSERT INTO ledger.entries (entry_id, posted_on, account_id, vendor_id, payment_id,
                            payment_paid_at, amount, memo)
SELECT e.g, e.posted_on, 1 + e.g % 200,
       CASE WHEN e.g % 5 = 0 THEN 1 + e.g % 20 END,
       p.payment_id, p.paid_at,
       ((e.g % 97) - 48) * 10.25,
       (SELECT value FROM nasty WHERE n = (e.g + 3) % 18)
FROM (SELECT g,
             CASE WHEN g <= 560 THEN (:cutoff)::date - 1 - (560 - g) / 2
                  WHEN g <= 780 THEN (:cutoff)::date + 2 + (g - 561) / 3
                  ELSE current_date + 90 + (g - 781) END AS posted_on,
             CASE WHEN g BETWEEN 561 AND 780 AND g % 3 = 0 THEN 300 + (g - 561)
                  WHEN g <= 560 AND g % 4 = 0 THEN g / 2 END AS payment_id
      FROM generate_series(1, 800) g) e
LEFT JOIN public.payments p ON p.payment_id = e.payment_id;

-- Invoices 1-300 are older than the window, 301-400 inside it, 401-402 drafts (no "issuedAt").
-- Chains: 30x -> 20x -> 10x -> 0x (x = 1..10: 301, 311, ..., 391 correct 201..210, which
-- correct 101..110, which correct 1..10); 51-55 -> 41-45 are old only; 305, 315, ... correct
-- the recent invoice before them.
INSERT INTO "Sales"."Invoices" (invoice_id, "invoiceNo", "issuedAt", order_id, order_placed_at,
                                billing_email, corrects_invoice_id, settles_entry_id,
                                amount_due, lines)
SELECT i.g, 'INV-' || lpad(i.g::text, 6, '0'), i.issued_at, o.order_id, o.placed_at,
       CASE WHEN i.g % 3 = 0 THEN upper(a.email::text) ELSE a.email::text END,
       CASE WHEN i.g BETWEEN 101 AND 110 OR i.g BETWEEN 201 AND 210 THEN i.g - 100
            WHEN i.g BETWEEN 51 AND 55 THEN i.g - 10
            WHEN i.g BETWEEN 301 AND 400 AND i.g % 10 = 1 THEN 201 + (i.g - 301) / 10
            WHEN i.g BETWEEN 301 AND 400 AND i.g % 10 = 5 THEN i.g - 1 END,
       CASE WHEN i.g BETWEEN 301 AND 400 AND i.g % 7 = 0 THEN i.g - 300 END,
       round(o.total_cents / 100.0, 2),
       jsonb_build_array(jsonb_build_object('sku', o.sku, 'qty', o.quantity,
                                            'text', (SELECT value FROM nasty WHERE n = i.g % 18)))
FROM (SELECT g,
             CASE WHEN g <= 300
                  THEN :cutoff - ((300 - g) * interval '20 hours' + interval '10 hours')
                  WHEN g <= 400
                  THEN :cutoff + ((g - 301) * interval '20 hours' + interval '10 hours') END
                 AS issued_at,
             CASE WHEN g <= 300 THEN 3 * g - 2
                  WHEN g <= 400 AND g % 2 = 1 THEN 600 + (g - 300)
                  WHEN g <= 400 THEN 901 + (g - 301) * 2
                  ELSE 1600 - g END AS order_id
      FROM generate_series(1, 402) g) i
JOIN public.orders o ON o.order_id = i.order_id
JOIN public."Accounts" a ON a.account_id = o.account_id;

INSERT INTO "Sales"."Leads" (lead_id, owner_email, stage, vendor_id, converted_order_id,
                             converted_order_placed_at, notes)
SELECT l.g,
       CASE WHEN l.g % 2 = 0 THEN upper(a.email::text) ELSE initcap(a.email::text) END,
       (enum_range(NULL::"Sales"."LeadStage"))[1 + l.g % 4],
       CASE WHEN l.g = 150 THEN 9999 WHEN l.g % 10 = 0 THEN 1 + l.g % 20 END,
       o.order_id, o.placed_at,
       (SELECT value FROM nasty WHERE n = (l.g + 1) % 18)
FROM generate_series(1, 150) l(g)
JOIN public."Accounts" a ON a.account_id = 1 + (l.g * 3) % 200
LEFT JOIN public.orders o ON l.g % 4 = 2 AND o.order_id = l.g * 5;

-- Added after the data, NOT VALID: lead 150 names vendor 9999, which does not exist.
ALTER TABLE "Sales"."Leads" ADD CONSTRAINT leads_vendor_fkey
    FOREIGN KEY (vendor_id) REFERENCES ledger.vendors (vendor_id) NOT VALID;

INSERT INTO public.secrets (secret_id, account_id, tenant_id, label, payload, created_at)
SELECT g, 1 + g % 200, 1 + g % 5, 'secret ' || g, decode(md5('secret' || g), 'hex'),
       now() - g * interval '1 hour'
FROM generate_series(1, 1500) g;

INSERT INTO public.sessions (session_id, account_id, started_at, user_agent)
SELECT md5('session' || g)::uuid, 1 + g % 200, now() - g * interval '37 minutes',
       (SELECT value FROM nasty WHERE n = (g + 2) % 18)
FROM generate_series(1, 300) g;

-- Fires the trigger: these accounts get updated_at = now().
UPDATE public."Accounts" SET credit_limit = credit_limit + 100 WHERE account_id % 10 = 0;

ALTER TABLE public.secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY secrets_app ON public.secrets FOR ALL TO adv_app USING (true) WITH CHECK (true);
-- Everyone else sees one tenant's rows, only once the application set app.tenant_id.
CREATE POLICY secrets_tenant ON public.secrets FOR ALL TO PUBLIC
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::integer);

GRANT USAGE ON SCHEMA ledger, "Sales" TO adv_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, ledger, "Sales" TO adv_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public, ledger, "Sales" TO adv_app;
REVOKE ALL ON ledger.fx_rates FROM adv_app;
GRANT SELECT ON ledger.fx_rates TO adv_group;
ALTER DEFAULT PRIVILEGES IN SCHEMA ledger GRANT SELECT ON TABLES TO adv_app;

RESET ROLE;
COMMIT;

ANALYZE;
