"""The chain server's HTTP layer: routes, the Guard middleware, server-sent events, and the one
table that turns errors into status codes. Below it: chains → dataplane → engine (STYLE.md)."""
