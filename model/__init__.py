"""tagstream's offline side: labeled text in, a self-describing compiled model bundle out."""
