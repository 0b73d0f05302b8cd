-- Addresses the provider moved (a Telegram group upgraded to a supergroup): the old address,
-- where its messages now go and since when, shown with the channels' health.
CREATE TABLE address_moves (
    channel TEXT NOT NULL,
    old_address TEXT NOT NULL,
    new_address TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel, old_address)
);
