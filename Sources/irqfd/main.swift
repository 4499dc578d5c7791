print("irqfd")
