-- Per-database setup run by a superuser right after CREATE DATABASE (npm run db:init, the embedded
-- bootstrap, the test setup). :DATABASE_NAME is substituted by the caller.
revoke all on database :DATABASE_NAME from public;
grant connect, temporary on database :DATABASE_NAME to crm_authenticator;
grant all on database :DATABASE_NAME to crm_owner;
-- PostgreSQL 15+ already keeps CREATE on public away from PUBLIC; make it explicit for 14 and older
-- clusters and let the owner manage the schema.
revoke all on schema public from public;
alter schema public owner to crm_owner;
-- Extensions the schema relies on. They are trusted in PostgreSQL 13+, but creating them here as a
-- superuser also works on servers where they are not.
create extension if not exists pgcrypto with schema public;
create extension if not exists citext with schema public;
create extension if not exists pg_trgm with schema public;
create extension if not exists btree_gin with schema public;
