"""Network Block Device server: a sans-I/O protocol core, an asyncio shell, and exports."""
