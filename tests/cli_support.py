"""What the command-line tests expect of the CLI's wording, in one place."""

# The line an unknown --session or session id ends with: where to find the right one.
SESSIONS_HINT = " (`context-assistant sessions list` shows your sessions; --user picks whose)"
