"""Helpers the tests share: clients, servers, test tasks, hostile files, idle measurements."""
