-- Runs once in each primary (docker-entrypoint-initdb.d): the application's schema and
-- role. Applications must not log in as superusers (a superuser can bypass the fence).
CREATE TABLE orders (id bigint PRIMARY KEY, payload text);
CREATE ROLE app LOGIN PASSWORD 'app';
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO app;
