"""The applications: the `teacher` command line, `teacher serve`, `teacher demo`, `teacher doctor`,
`teacher prune`. The only package that may import every layer (api, worker, common); nothing
below imports it (checked by import-linter, see pyproject.toml)."""
