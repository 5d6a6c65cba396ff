"""The CLI's sub-commands, one module per area of the API."""
