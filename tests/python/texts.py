"""Sentences in four topics, for the text-encoder tests and fixtures."""

TOPICS = {
    "cooking": [
        "Simmer the tomato sauce with garlic and basil for twenty minutes.",
        "Knead the bread dough until it is smooth and elastic.",
        "Roast the vegetables in a hot oven with olive oil.",
        "Whisk the eggs and sugar before folding in the flour.",
        "Season the soup with salt, pepper and fresh herbs.",
        "Grill the salmon fillets skin side down over high heat.",
        "Caramelise the onions slowly in butter.",
        "Let the cake cool before spreading the chocolate icing.",
    ],
    "space": [
        "The rover collected rock samples from the Martian crater.",
        "A new exoplanet was found orbiting a red dwarf star.",
        "The telescope captured light from a distant galaxy.",
        "Astronauts docked with the international space station.",
        "The rocket's second stage reached orbit after launch.",
        "Saturn's rings are made of ice and dust particles.",
        "The probe flew past Jupiter's largest moon.",
        "A solar flare disturbed satellite communications.",
    ],
    "football": [
        "The striker scored a penalty in the final minute.",
        "The goalkeeper saved a header from the corner kick.",
        "The team won the league after a draw away from home.",
        "The referee showed a red card for a dangerous tackle.",
        "Midfielders pressed high to win the ball back.",
        "Fans sang in the stadium as the match kicked off.",
        "The coach changed formation at half time.",
        "A last-minute equaliser sent the cup final to extra time.",
    ],
    "gardening": [
        "Prune the roses in early spring before new growth.",
        "Water the tomato seedlings every morning.",
        "Spread compost around the fruit trees in autumn.",
        "Plant the tulip bulbs six inches deep.",
        "Pull the weeds before they set seed.",
        "Mulch the vegetable beds to keep the soil moist.",
        "Repot the orchid when its roots outgrow the pot.",
        "Sow lettuce in rows a foot apart.",
    ],
}
