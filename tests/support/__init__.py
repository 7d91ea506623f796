"""Helpers shared by the tests (not tests themselves): the process orchestration (stack, procs),
the API test helpers (api), the training helpers (training), the OpenAPI response check."""
