"""Reading, validating and scaling user data (shared by every task)."""
