"""The run shell: a whole task sequence from a configuration (setup, loop, resume, router,
records, reports) and the command line."""
