"""Who is asking: users, sessions, API tokens, CSRF, login limits and the audit log."""
