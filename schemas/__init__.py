"""Schemas of everything passed between stages: Arrow schemas, pydantic records, expectation suites."""
