"""The FineTuneJob operator (kopf). Not implemented yet: it follows the API and trainer."""
