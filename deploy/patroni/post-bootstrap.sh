#!/bin/sh
# Patroni runs this once, on the node that initialises the cluster (bootstrap.post_bootstrap in
# patroni.yml), with the superuser's connection URL as its argument: the service's role and its
# database. The password comes from COALITION_DB_PASSWORD; `coalition init` makes the schema.
set -eu
: "${COALITION_DB_PASSWORD:?set COALITION_DB_PASSWORD for the coalition role}"
psql "$1" --no-psqlrc -v ON_ERROR_STOP=1 -v password="$COALITION_DB_PASSWORD" <<'SQL'
CREATE ROLE coalition LOGIN PASSWORD :'password';
CREATE DATABASE coalition OWNER coalition;
SQL
