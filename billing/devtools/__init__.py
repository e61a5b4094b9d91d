"""Developer tools (code generation and the like); not used at run time."""
